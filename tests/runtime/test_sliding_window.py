"""The streamed sliding window against MONAI's sliding_window_inference (gaussian mode):
same window grid, same weights, same blended logits, while holding only one z-row of
windows at a time."""

from __future__ import annotations

import numpy as np
import pytest

from kidedge.runtime.sliding_window import (
    SlabBlender,
    WindowGrid,
    WindowSpec,
    centre_padding,
    gaussian_importance,
    window_starts,
)

monai_utils = pytest.importorskip("monai.data.utils")
monai_inferers = pytest.importorskip("monai.inferers")
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("size,patch,overlap", [
    (64, 16, 0.5), (65, 16, 0.5), (16, 16, 0.5), (100, 96, 0.5), (40, 8, 0.25), (37, 12, 0.0), (30, 7, 0.9)])
def test_window_starts_are_monais(size, patch, overlap):
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval((size,), (patch,), 1, (overlap,))
    ref = [s[0].start for s in monai_utils.dense_patch_slices((size,), (patch,), interval)]
    assert window_starts(size, patch, overlap) == ref


def test_padding_and_short_axes():
    assert centre_padding(10, 16) == (3, 3) and centre_padding(11, 16) == (2, 3) and centre_padding(20, 16) == (0, 0)
    with pytest.raises(ValueError):
        window_starts(10, 16, 0.5)
    g = WindowGrid((5, 40, 13), WindowSpec((8, 16, 16)))
    assert g.padded == (8, 40, 16) and g.starts[0] == [0] and g.starts[2] == [0] and g.starts[1] == [0, 8, 16, 24]


@pytest.mark.parametrize("patch", [(8, 16, 16), (5, 12, 9)])
def test_gaussian_weights_are_monais(patch):
    ref = monai_utils.compute_importance_map(patch, mode="gaussian", sigma_scale=0.125).numpy()
    got = gaussian_importance(patch)
    assert got.dtype == np.float32 and got.shape == patch
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=0)


def test_window_spec_from_recipe_stride():
    s = WindowSpec.from_stride([64, 96, 96], [32, 48, 48])  # paper 003's Masses-Net
    assert s.overlap == (0.5, 0.5, 0.5)
    assert WindowSpec.from_stride([16, 256, 256], None).overlap == (0.5, 0.5, 0.5)
    assert WindowSpec.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError):
        WindowSpec((8, 8, 8), overlap=(1.0, 0.5, 0.5))


def _conv_net(classes=3, seed=0):
    """A small deterministic 3D conv net (receptive field > 1, so windows' borders matter)."""
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv3d(4, classes, 3, padding=1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net.eval()


@pytest.mark.parametrize("shape,patch,overlap,chunks", [
    ((23, 40, 36), (8, 16, 16), (0.5, 0.5, 0.5), [5, 1, 9, 8]),   # several z-rows, shifted last window
    ((6, 20, 50), (8, 16, 16), (0.5, 0.25, 0.5), [6]),              # z shorter than the patch: padded
    ((17, 16, 16), (4, 16, 16), (0.0, 0.5, 0.5), [3] * 5 + [2]),    # no overlap in z
])
def test_streamed_blend_equals_monai(shape, patch, overlap, chunks):
    rng = np.random.default_rng(1)
    vol = rng.normal(size=shape).astype(np.float32)
    net = _conv_net()
    pad = -0.7
    with torch.no_grad():
        ref = monai_inferers.sliding_window_inference(
            torch.from_numpy(vol)[None, None], patch, 3, net, overlap=list(overlap), mode="gaussian",
            sigma_scale=0.125, padding_mode="constant", cval=pad)[0].numpy()

    def infer(x):
        with torch.no_grad():
            return net(torch.from_numpy(x)).numpy()

    grid = WindowGrid(shape, WindowSpec(patch, overlap))
    calls = []
    blender = SlabBlender(grid, infer, pad, batch=3, on_batch=lambda n, s: calls.append(n))
    got = np.full((3, *shape), np.nan, np.float32)
    seen = []
    z = 0
    for n in chunks:
        for a, b, part in blender.push(vol[z:z + n]):
            got[:, a:b] = part
            seen.append((a, b))
        z += n
    for a, b, part in blender.close():
        got[:, a:b] = part
        seen.append((a, b))
    assert z == shape[0]
    # every slice handed out once, in order
    assert seen[0][0] == 0 and seen[-1][1] == shape[0] and all(x[1] == y[0] for x, y in zip(seen, seen[1:], strict=False))
    assert blender.windows_run == grid.n_windows == sum(calls)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_blender_holds_one_row_of_windows():
    """Input held never exceeds patch depth + the chunk just pushed (bounded memory)."""
    grid = WindowGrid((200, 16, 16), WindowSpec((8, 16, 16)))
    peak = 0

    def infer(x):
        return np.zeros((x.shape[0], 2, *x.shape[2:]), np.float32)

    blender = SlabBlender(grid, infer, 0.0)
    for _ in range(0, 200, 4):
        blender.push(np.zeros((4, 16, 16), np.float32))
        peak = max(peak, len(blender._in))
    blender.close()
    assert peak <= 8 + 4


def test_blender_rejects_wrong_feeding():
    grid = WindowGrid((10, 16, 16), WindowSpec((8, 16, 16)))
    blender = SlabBlender(grid, lambda x: np.zeros((x.shape[0], 2, *x.shape[2:]), np.float32), 0.0)
    with pytest.raises(ValueError):
        blender.push(np.zeros((2, 16, 15), np.float32))
    blender.push(np.zeros((4, 16, 16), np.float32))
    with pytest.raises(ValueError):
        blender.close()  # 6 slices missing
    bad = SlabBlender(grid, lambda x: np.zeros((x.shape[0], 2, 4, 8, 8), np.float32), 0.0)
    with pytest.raises(ValueError):
        bad.push(np.zeros((10, 16, 16), np.float32))
