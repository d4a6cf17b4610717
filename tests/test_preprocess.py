import numpy as np
import pytest

from kidedge.preprocess import (
    SPAN_ALIGN_PX,
    PreprocessSpec,
    context_indices,
    fit_zscore,
    grid_filling_span,
    normalised_value,
    output_size,
    padded_size,
    preprocess_slices,
    resize_labels_nearest,
    resize_linear,
)


def test_range_normalisation_maps_window_to_unit_interval():
    spec = PreprocessSpec(hu_window=(-100, 400), normalisation="range")
    hu = np.array([[[-1000, -100, 150, 400, 3000]]], np.int16)
    out = preprocess_slices(hu, spec)
    assert out.shape == (1, 1, 1, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, 0], [0, 0, 0.5, 1, 1], atol=1e-6)


def test_zscore_uses_spec_statistics_and_slope_intercept():
    spec = PreprocessSpec(hu_window=(0, 200), normalisation="zscore", mean=100.0, std=50.0)
    raw = np.array([[[1024, 1124, 1224]]], np.uint16)  # stored values, HU = raw - 1024
    out = preprocess_slices(raw, spec, intercept=-1024.0)
    np.testing.assert_allclose(out[0, 0, 0], [-2.0, 0.0, 2.0], atol=1e-6)


def test_resize_linear_preserves_constants_and_matches_align_corners_false():
    x = np.full((2, 64, 48), 7.5, np.float32)
    np.testing.assert_allclose(resize_linear(x, (32, 96)), 7.5, rtol=1e-6)
    # Upsampling a ramp by 2 with pixel-centre alignment: interior values are exact.
    ramp = np.arange(8, dtype=np.float32)[None, None, :].repeat(2, 1)
    up = resize_linear(ramp, (2, 16))[0, 0]
    np.testing.assert_allclose(up[1:-1], (np.arange(1, 15) + 0.5) / 2 - 0.5, atol=1e-6)
    assert up[0] == 0 and up[-1] == 7  # edges replicate, never extrapolate


def test_downsampling_is_antialiased():
    # A one-pixel checkerboard must average out, not alias into stripes.
    board = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)
    small = resize_linear(board, (16, 16))
    assert abs(small.mean() - 0.5) < 1e-3 and small.std() < 0.05


def test_size_and_spacing_modes_and_padding():
    spec = PreprocessSpec(in_plane="spacing", spacing_mm=2.0, pad_multiple=32)
    assert output_size(spec, (512, 512), (0.78, 0.78)) == (200, 200)
    assert padded_size(spec, (200, 200)) == (224, 224)
    out = preprocess_slices(np.zeros((1, 512, 512), np.int16), spec, (0.78, 0.78))
    assert out.shape == (1, 1, 224, 224)
    assert out[0, 0, -1, -1] == pytest.approx(normalised_value(-100, spec))
    sized = PreprocessSpec(in_plane="size", size=(128, 160))
    assert preprocess_slices(np.zeros((3, 512, 512), np.int16), sized).shape == (3, 1, 128, 160)


def test_context_stacks_neighbours_as_channels():
    spec = PreprocessSpec(hu_window=(0, 10), context=1)
    vol = np.arange(5, dtype=np.int16)[:, None, None] * np.ones((1, 2, 2), np.int16)
    idx = context_indices(0, 5, 1, 5)
    np.testing.assert_array_equal(idx, [0, 0, 1, 2, 3, 4, 4])
    out = preprocess_slices(vol[idx], spec)
    assert out.shape == (5, 3, 2, 2)
    np.testing.assert_allclose(out[0, :, 0, 0] * 10, [0, 0, 1])
    np.testing.assert_allclose(out[4, :, 0, 0] * 10, [3, 4, 4])


def test_nearest_label_resize_keeps_label_values():
    labels = np.zeros((1, 8, 8), np.uint8)
    labels[0, 2:6, 2:6] = 2
    small = resize_labels_nearest(labels, (4, 4))
    assert set(np.unique(small)) == {0, 2}
    assert (resize_labels_nearest(small, (8, 8)) == labels).all()


def test_spec_round_trips_through_dict_and_rejects_bad_values():
    spec = PreprocessSpec(hu_window=(0, 200), normalisation="zscore", mean=90, std=40,
                          in_plane="size", size=(256, 256), context=2, pad_multiple=32)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError):
        PreprocessSpec(hu_window=(200, 0))
    with pytest.raises(ValueError):
        PreprocessSpec(normalisation="zscore", std=0)
    with pytest.raises(ValueError):
        PreprocessSpec.from_dict({"hu_windw": [0, 1]})


def test_fit_zscore_clips_before_measuring():
    mean, std = fit_zscore(np.array([-1000.0, 0, 100, 200, 5000]), (0, 200))
    assert mean == pytest.approx(100.0) and std == pytest.approx(np.std([0, 0, 100, 200, 200]))


@pytest.mark.parametrize("mode", ["spacing", "native"])
def test_grid_filling_span_fills_the_padded_input_and_no_more(mode):
    spec = PreprocessSpec(in_plane=mode, spacing_mm=1.25 if mode == "spacing" else None, pad_multiple=32)
    rng = np.random.default_rng(0)
    for _ in range(300):
        length = int(rng.integers(40, 600))
        px = float(rng.uniform(0.5, 1.5))
        a = int(rng.integers(0, length - 1))
        b = int(rng.integers(a + 1, length + 1))
        lo, hi = grid_filling_span(spec, a, b, length, px)

        def out(n, px=px):
            return output_size(spec, (n, 1), (px, px))[0]

        target = padded_size(spec, (out(b - a), 1))[0]
        assert 0 <= lo <= a and b <= hi <= length  # contains the box, inside the axis
        assert padded_size(spec, (out(hi - lo), 1))[0] == target  # the same network input
        if hi - lo < length:  # as large as it can be: one pixel more would need more padding
            assert out(hi - lo + 1) > target
        # on the alignment grid where the slack allows, else about even on both sides
        assert lo % SPAN_ALIGN_PX == 0 or abs((a - lo) - (hi - b)) <= 1 or lo == 0 or hi == length


def test_grid_filling_spans_of_boxes_a_few_pixels_apart_mostly_coincide():
    """Two boxes shifted by 3 pixels (the stepped localiser against the every-slice one)
    get the same grown span unless an alignment boundary falls between them."""
    spec = PreprocessSpec(in_plane="spacing", spacing_mm=1.25, pad_multiple=32)
    same = [grid_filling_span(spec, a, a + 371, 512, 0.8) == grid_filling_span(spec, a + 3, a + 374, 512, 0.8)
            for a in range(40, 100)]
    assert sum(same) >= 0.7 * len(same)


def test_grid_filling_span_leaves_fixed_size_inputs_alone():
    spec = PreprocessSpec(in_plane="size", size=(96, 96))
    assert grid_filling_span(spec, 10, 50, 512, 0.8) == (10, 50)
