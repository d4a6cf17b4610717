import dataclasses
import json

import numpy as np
import pytest

from kidedge.errors import KidedgeError
from kidedge.io import load_scan
from kidedge.package import ModelPackage, StageOutput
from kidedge.package.manifest import Manifest
from kidedge.runtime.gating import RegionOfInterest
from kidedge.runtime.pipeline import run_stage
from kidedge.runtime.profiling import Profiler
from kidedge.runtime.through_plane import (
    ThroughPlaneSmoother,
    smooth_probabilities,
    through_plane_weights,
)

from .synthetic import kits_affine, write_nifti
from .test_pipeline import STAGE, SideBySide, Threshold


def test_weights_span_a_fixed_width_in_mm():
    thin, thick = through_plane_weights(0.5, 4.0), through_plane_weights(5.0, 4.0)
    assert thin.size == 33 and thick.size == 5  # +-8 mm: 16 slices of 0.5 mm, 2 of 5 mm
    for w in (thin, thick):
        assert w.sum() == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(w, w[::-1])
        assert w.argmax() == w.size // 2
    np.testing.assert_array_equal(through_plane_weights(2.0, 0.0), [1.0])
    with pytest.raises(ValueError):
        through_plane_weights(2.0, -1.0)
    with pytest.raises(ValueError):
        through_plane_weights(0.0, 4.0)


def test_smoothing_outvotes_a_one_slice_speck():
    # kidney on 9 slices, one of which the network calls tumour: the neighbours outvote it
    logits = np.zeros((9, 3, 2, 2), np.float32)
    logits[:, 1] = 3.0
    logits[4, 2] = 4.0
    alone = smooth_probabilities(logits, np.ones(1, np.float32)).argmax(axis=1)
    assert (alone[4] == 2).all()
    smoothed = smooth_probabilities(logits, through_plane_weights(2.0, 2.0)).argmax(axis=1)
    assert (smoothed == 1).all()


@pytest.mark.parametrize("cuts", [[4] * 6, [1] * 23, [23], [3, 7, 2, 11]])
def test_streaming_equals_the_whole_stack(cuts):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(23, 4, 5, 6)).astype(np.float32)
    w = through_plane_weights(1.0, 2.0)
    sm, parts, i = ThroughPlaneSmoother(w), [], 0
    for c in cuts:
        ready = sm.push(100 + i, z[i:i + c])
        i += c
        if ready is not None:
            parts.append(ready)
    if (ready := sm.finish()) is not None:
        parts.append(ready)
    assert parts[0][0] == 100  # the caller's slice numbers, consecutive
    assert all(q[0] == p[0] + len(p[1]) for p, q in zip(parts, parts[1:], strict=False))
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), smooth_probabilities(z, w), atol=1e-6)
    assert len(sm._slices) <= w.size  # only the slices the average still needs are held


def test_streaming_refuses_slices_out_of_order():
    sm = ThroughPlaneSmoother(through_plane_weights(1.0, 2.0))
    sm.push(0, np.zeros((2, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="in order"):
        sm.push(3, np.zeros((2, 2, 3, 3), np.float32))


@pytest.fixture
def scan(tmp_path):
    rng = np.random.default_rng(1)
    hu = rng.integers(-100, 400, size=(21, 16, 24)).astype(np.int16)  # noisy: labels flicker slice to slice
    return load_scan(write_nifti(tmp_path / "s.nii.gz", hu, kits_affine())), hu


@pytest.mark.parametrize("backend,batch", [(Threshold, 3), (Threshold, 1), (lambda: SideBySide(3), 2)])
def test_pipeline_labels_are_those_of_the_smoothed_stack(scan, backend, batch):
    s, hu = scan
    stage = dataclasses.replace(STAGE, output=StageOutput("softmax", (0, 1), through_plane_sigma_mm=3.0))
    roi = RegionOfInterest(3, 19, 2, 14, 4, 22)
    got = np.zeros(s.shape, np.uint8)

    def sink(a, z, lab):
        assert z - a == lab.shape[0]
        got[a:z, 2:14, 4:22] = lab

    with backend() as b, Profiler(gpu=False, power=False) as prof:
        assert run_stage(s, b, stage, sink, prof, region=roi, batch=batch, slab_size=4) == 16
    x = np.clip((hu[3:19, 2:14, 4:22] + 100) / 500, 0, 1).astype(np.float32)[:, None]
    logits = np.concatenate([np.full_like(x, 0.5), x], axis=1)  # what Threshold computes
    expect = np.zeros_like(got)
    expect[3:19, 2:14, 4:22] = smooth_probabilities(logits, through_plane_weights(2.0, 3.0)).argmax(axis=1)
    np.testing.assert_array_equal(got, expect)
    plain = (x[:, 0] > 0.5).astype(np.uint8)
    assert (got[3:19, 2:14, 4:22] != plain).any()  # the smoothing did change labels


def _manifest(package_dir):
    return json.loads((package_dir / "manifest.json").read_text())


def test_manifest_reads_writes_and_checks_the_sigma(cascade_package):
    m = _manifest(cascade_package)
    assert Manifest.from_dict(m, "p").stages[1].output.through_plane_sigma_mm == 0.0  # absent: off
    m["stages"][1]["output"]["through_plane_sigma_mm"] = 4.0
    stage = Manifest.from_dict(m, "p").stages[1]
    assert stage.output.through_plane_sigma_mm == 4.0
    assert stage.output.to_dict()["through_plane_sigma_mm"] == 4.0
    for bad in (-1.0, "4", True):
        m["stages"][1]["output"]["through_plane_sigma_mm"] = bad
        with pytest.raises(KidedgeError, match="through_plane_sigma_mm"):
            Manifest.from_dict(m, "p")
    m["stages"][1]["output"]["through_plane_sigma_mm"] = 4.0
    m["dimensionality"] = "3d"
    with pytest.raises(KidedgeError, match="2D stages"):
        Manifest.from_dict(m, "p")


def test_shipped_segmenter_smooths_and_recipe_says_so():
    from kidedge.train.recipes import load_recipe

    seg = [s for s in ModelPackage.load().stages if s.role == "segment"][0]
    recipe = load_recipe("kidedge_default")
    from_recipe = [s for s in recipe["stages"] if s["role"] == "segment"][0]["output"]["through_plane_sigma_mm"]
    assert seg.output.through_plane_sigma_mm == from_recipe == 4.0


def test_recipe_refuses_a_sigma_on_a_3d_stage():
    from kidedge.train.recipes import load_recipe

    with pytest.raises(KidedgeError, match="through_plane_sigma_mm"):
        load_recipe("cascade3d_kits21", overrides=["masses.output.through_plane_sigma_mm=4.0"])


def test_the_baselines_torch_smoothing_gives_the_runtimes_numbers():
    torch = pytest.importorskip("torch")
    from kidedge.bench.baselines import smooth_probabilities_torch

    z = np.random.default_rng(2).normal(size=(9, 4, 5, 7)).astype(np.float32)
    w = through_plane_weights(1.0, 2.0)
    got = smooth_probabilities_torch(torch, torch.from_numpy(z), w).numpy()
    np.testing.assert_allclose(got, smooth_probabilities(z, w), atol=1e-6)


def test_infer_overrides_the_packages_sigma(tmp_path, ct_case, cascade_package):
    from kidedge.runtime.command import infer_command

    path, _, _ = ct_case
    stages = {}
    for sigma in (6.0, 0.0):
        prof = tmp_path / f"p{sigma:g}.json"
        assert infer_command([str(path)], output=str(tmp_path / f"o{sigma:g}.nii.gz"), model=str(cascade_package),
                             profile=str(prof), through_plane_mm=sigma) == 0
        stages[sigma] = json.loads(prof.read_text())["scans"][0]["profile"]["stages_s"]
    assert "segment.smooth" in stages[6.0] and "segment.smooth" not in stages[0.0]


@pytest.mark.parametrize("value,fragment", [("-1", "through-plane-mm"), ("nan", "through-plane-mm")])
def test_infer_refuses_a_bad_sigma_in_one_line(tmp_path, ct_case, cascade_package, value, fragment):
    from click.testing import CliRunner

    from kidedge.cli import main

    path, _, _ = ct_case
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["infer", str(path), "-o", str(out), "--model", str(cascade_package),
                                  "--through-plane-mm", value])
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_the_override_refuses_stages_that_cannot_average():
    from kidedge.runtime.engine import _with_through_plane

    sigmoid = dataclasses.replace(STAGE, output=StageOutput("sigmoid", (1, 2)))
    with pytest.raises(KidedgeError, match="2D softmax"):
        _with_through_plane(sigmoid, 4.0, is_3d=False)
    with pytest.raises(KidedgeError, match="2D softmax"):
        _with_through_plane(STAGE, 4.0, is_3d=True)
    assert _with_through_plane(sigmoid, 0.0, is_3d=False).output.through_plane_sigma_mm == 0.0
    assert _with_through_plane(STAGE, 2.5, is_3d=False).output.through_plane_sigma_mm == 2.5
