"""The 3D cascade in the lean runtime against the papers' way of running it: the whole
volume in memory, preprocessed by the same kidedge.preprocess, and PyTorch through MONAI's
sliding_window_inference (gaussian mode). Labels must agree except at ties (voxels where
the reference's two best logits are within 1e-3). Also: per-kidney boxes, output in the
input's geometry for a non-canonical NIfTI, and bounded memory on a long scan."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest

from kidedge.errors import KidedgeError
from kidedge.io import load_scan, save_segmentation
from kidedge.package import ModelPackage
from kidedge.preprocess import preprocess_slices
from kidedge.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from kidedge.runtime.cascade3d import KidneyLocator, segment_3d
from kidedge.runtime.gating import RegionOfInterest
from kidedge.runtime.labels import logits_to_labels
from kidedge.runtime.profiling import Profiler
from kidedge.runtime.stage3d import Stage3D, run_stage_3d

from .synthetic import write_ras_nifti

torch = pytest.importorskip("torch")
monai_inferers = pytest.importorskip("monai.inferers")
TIE = 1e-3


@pytest.fixture(scope="module")
def tiny3d(tmp_path_factory):
    """The tiny deterministic 3D cascade (tests/tiny3d.py), exported to fp32 ONNX."""
    from ..tiny3d import export_tiny3d

    torch.set_num_threads(1)
    data, out = export_tiny3d(tmp_path_factory.mktemp("tiny3d"))
    return data, ModelPackage.load(out)


def _stages(pkg):
    views = [Stage3D.of(s) for s in pkg.stages]
    seg = next(v for v in views if v.roi)
    return next(v for v in views if v.name == seg.roi["source_stage"]), seg


def _torch_model(pkg, name):
    from ..tiny3d import Tiny3DNet

    stage = next(s for s in pkg.stages if Stage3D.of(s).name == name)
    kwargs = stage["model_kwargs"] if isinstance(stage, dict) else dict(stage.model_kwargs)
    model = Tiny3DNet(**kwargs)
    model.load_state_dict(torch.load(pkg.file_path(name, "torch"), weights_only=True))
    return model.eval()


def _run(pkg, scan, gate=True):
    loc, seg = _stages(pkg)
    backends = {s.name: OnnxRuntimeBackend(pkg.file_path(s.name, "fp32"), threads=1).activate() for s in (loc, seg)}
    with Profiler() as prof:
        labels, gating = segment_3d(scan, loc, seg, backends, prof, gate=gate)
    return labels, gating, prof


def reference(model, hu, spacing, stage: Stage3D, region: RegionOfInterest | None = None, grid="scan"):
    """The papers' way: the region's whole float volume, MONAI sliding window, torch eager.
    Returns labels on ``grid`` and the top-2 logit margin there (for ties)."""
    n, h, w = hu.shape
    r = region or RegionOfInterest(0, n, 0, h, 0, w)
    x = preprocess_slices(hu[r.as_slices()], stage.spec, spacing[1:])[:, 0]
    win = stage.window
    with torch.no_grad():
        logits = monai_inferers.sliding_window_inference(
            torch.from_numpy(x)[None, None], win.patch, 4, model, overlap=list(win.overlap), mode=win.blend,
            sigma_scale=win.sigma_scale, padding_mode="constant", cval=stage.pad_value)[0].numpy()
    target = (r.row_stop - r.row_start, r.col_stop - r.col_start) if grid == "scan" else x.shape[1:]
    z = logits.transpose(1, 0, 2, 3)
    labels = logits_to_labels(z, stage.output, x.shape[1:], target)
    top = np.sort(z, axis=1)
    margin = top[:, -1] - top[:, -2]
    if tuple(target) != x.shape[1:]:
        margin = None  # resampled: compare labels only where both agree on a clear winner below
    return labels, margin


def assert_equal_up_to_ties(got, ref, margin):
    diff = got != ref
    if margin is None:
        assert diff.mean() < 1e-3, f"{diff.sum()} of {diff.size} voxels differ"
    else:
        assert not (diff & (margin > TIE)).any(), f"{(diff & (margin > TIE)).sum()} voxels differ beyond ties"


def test_gated_cascade_equals_the_torch_sliding_window(tiny3d):
    data, pkg = tiny3d
    path = data / "case_00000" / "imaging.nii.gz"
    scan = load_scan(path)
    hu = np.asarray(scan.array, np.float32)
    truth = np.asarray(nib.load(str(data / "case_00000" / "segmentation.nii.gz")).dataobj)
    labels, gating, prof = _run(pkg, scan)
    got = labels.to_dense()
    loc, seg = _stages(pkg)

    # stage 1 on its coarse grid, then the same kidney boxes
    ref1, margin1 = reference(_torch_model(pkg, loc.name), hu, scan.spacing, loc, grid="model")
    locator = KidneyLocator(scan.shape, scan.spacing, ref1.shape[1:], seg.roi["labels"], seg.roi["margin_mm"],
                            seg.roi["per_component"])
    locator.add(0, ref1)
    regions = locator.regions()
    assert [r.to_dict() for r in regions] == gating["regions"]
    assert len(regions) == 2  # one box per kidney (per_component), disjoint
    # stage 2 inside each box; background elsewhere
    model2 = _torch_model(pkg, seg.name)
    expected = np.zeros(scan.shape, np.uint8)
    margin = np.full(scan.shape, np.inf, np.float32)
    for r in regions:
        lab, m = reference(model2, hu, scan.spacing, seg, r)
        expected[r.as_slices()] = lab
        margin[r.as_slices()] = m
    assert_equal_up_to_ties(got, expected, margin)
    assert np.array_equal(got > 0, expected > 0) or (got != expected).sum() < 10
    # it found the anatomy (the intensity path), and gating skipped work
    from kidedge.metrics import dice

    assert dice(got > 0, truth > 0) > 0.8 and dice(got == 2, truth == 2) > 0.5
    assert gating["enabled"] and gating["stage1_components_kept"] == 2
    assert 0 < gating["windows_stage2"] < gating["windows_stage2_ungated"]
    assert gating["skipped_slice_fraction"] > 0.3 and gating["skipped_voxel_fraction"] > 0.5
    counters = prof.result(scan.shape[0])["counters"]
    assert counters["localise_windows"] == gating["windows_stage1"]
    assert counters["segment_windows"] == gating["windows_stage2"]


def test_ungated_and_resampled_stage_equal_the_torch_sliding_window(tiny3d):
    data, pkg = tiny3d
    scan = load_scan(data / "case_00001" / "imaging.nii.gz")
    hu = np.asarray(scan.array, np.float32)
    loc, seg = _stages(pkg)
    labels, gating, _ = _run(pkg, scan, gate=False)
    assert not gating["enabled"] and gating["windows_stage2"] == gating["windows_stage2_ungated"]
    ref, margin = reference(_torch_model(pkg, seg.name), hu, scan.spacing, seg)
    assert_equal_up_to_ties(labels.to_dense(), ref, margin)
    # the 4 mm localiser with its logits resampled back to the scan's pixels
    out = np.zeros(scan.shape, np.uint8)

    def sink(a, b, lab):
        out[a:b] = lab

    backend = OnnxRuntimeBackend(ModelPackage.load(pkg.source).file_path(loc.name, "fp32"), threads=1).activate()
    with Profiler() as prof:
        run = run_stage_3d(scan, backend, loc, sink, prof, slab_size=5, name="localise")
    ref, _ = reference(_torch_model(pkg, loc.name), hu, scan.spacing, loc)
    assert_equal_up_to_ties(out, ref, None)
    assert run.grid == (32, 16, 16) and run.windows == 7 * 3 * 3


def test_output_in_the_input_geometry(tiny3d, tmp_path):
    """A RAS (x, y, z) NIfTI, as dcm2niix writes: labels come back in its own shape and
    affine, voxel for voxel the labels of the KiTS-layout copy of the same scan."""
    data, pkg = tiny3d
    kits = load_scan(data / "case_00002" / "imaging.nii.gz")
    ras_path = write_ras_nifti(tmp_path / "ras.nii.gz", np.asarray(kits.array), kits.spacing)
    ras = load_scan(ras_path)
    assert ras.orientation.slice_axis == 2 and ras.shape == kits.shape
    canonical, _, _ = _run(pkg, kits)
    labels, gating, _ = _run(pkg, ras)
    out = save_segmentation(labels.to_dense(), ras, tmp_path / "ras_seg.nii.gz")
    img, src = nib.load(str(out)), nib.load(str(ras_path))
    assert img.shape == src.shape and np.allclose(img.affine, src.affine)
    assert np.asarray(img.dataobj).dtype == np.uint8
    assert np.array_equal(ras.to_canonical(np.asarray(img.dataobj)), canonical.to_dense())
    assert gating["regions"] and canonical.to_dense().any()


def test_locator_boxes_per_kidney_merge_and_strays():
    shape, spacing = (40, 200, 200), (2.0, 1.0, 1.0)
    lab = np.zeros((40, 50, 50), np.uint8)  # a 4 mm grid
    lab[10:20, 20:30, 5:12] = 1     # right kidney
    lab[12:22, 20:30, 38:45] = 1    # left kidney
    lab[35, 2, 2] = 1               # a stray speck: dropped
    loc = KidneyLocator(shape, spacing, (50, 50), [1, 2, 3], 4.0, per_component=True)
    loc.add(0, lab[:17])
    loc.add(17, lab[17:])
    boxes = loc.regions()
    assert loc.components_found == 3 and loc.components_kept == 2
    assert [(b.slice_start, b.slice_stop, b.row_start, b.row_stop, b.col_start, b.col_stop) for b in boxes] == [
        (8, 22, 76, 124, 16, 52), (10, 24, 76, 124, 148, 184)]
    union = KidneyLocator(shape, spacing, (50, 50), [1], 4.0, per_component=False)
    union.add(0, lab)
    assert [b.to_dict() for b in union.regions()] == [RegionOfInterest(8, 24, 76, 124, 16, 184).to_dict()]
    # a margin wide enough to make the two boxes overlap merges them into one
    wide = KidneyLocator(shape, spacing, (50, 50), [1], 60.0, per_component=True)
    wide.add(0, lab)
    assert len(wide.regions()) == 1
    # a fine grid is pooled: the mask stays small, the box still holds every detection
    fine = KidneyLocator((40, 512, 512), spacing, (512, 512), [1], 0.0)
    hit = np.zeros((40, 512, 512), np.uint8)
    hit[5:9, 101:131, 300:333] = 1
    fine.add(0, hit)
    assert fine.mask.shape == (40, 128, 128)
    (b,) = fine.regions()
    assert (b.row_start, b.col_start) <= (101, 300) and (b.row_stop, b.col_stop) >= (131, 333)
    assert b.row_stop - b.row_start <= 30 + 8 and b.col_stop - b.col_start <= 33 + 8
    assert KidneyLocator(shape, spacing, (50, 50), [1], 4.0).regions() == []


def test_a_3d_stage_without_window_settings_is_one_line_error(tiny3d):
    _, pkg = tiny3d
    stage = next(s for s in pkg.stages if (s.get("roi") if isinstance(s, dict) else s.roi))
    d = dict(stage) if isinstance(stage, dict) else stage.to_dict()
    d.pop("window")
    with pytest.raises(KidedgeError, match="no sliding-window settings"):
        Stage3D.of(d)
    d["window"] = {"patch": [8, 16], "overlap": 0.5}
    with pytest.raises(KidedgeError, match="bad window settings"):
        Stage3D.of(d)


_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from kidedge.io import load_scan, save_segmentation
    from kidedge.preprocess import PreprocessSpec
    from kidedge.runtime.cascade3d import segment_3d
    from kidedge.runtime.profiling import Profiler
    from kidedge.runtime.sliding_window import WindowSpec
    from kidedge.runtime.stage3d import Stage3D
    try:
        from kidedge.bench.measure import peak_rss_mb, reset_peak_rss
    except ImportError:
        from kidedge.bench.measure import peak_rss_mb, reset_peak_rss

    class IntensityNet:  # the network's cost is not what is measured: a 1x1x1 map of intensity
        def infer(self, x):
            return np.concatenate([np.zeros_like(x), 10 * x - 4, 20 * x - 11, np.full_like(x, -100)], axis=1)

    spec = PreprocessSpec(hu_window=(-100.0, 400.0), normalisation="range")
    stage = Stage3D("segment", spec, WindowSpec((16, 64, 64)), {"activation": "softmax", "labels": [0, 1, 2, 3]})
    scan = load_scan(sys.argv[1])
    reset_peak_rss()
    with Profiler() as prof:
        labels, gating = segment_3d(scan, None, stage, {"segment": IntensityNet()}, prof, gate=False)
    print(json.dumps({"peak_mb": peak_rss_mb(), "labelled": len(labels), "windows": gating["windows_stage2"]}))
""")


def test_peak_memory_does_not_grow_with_the_scan(tmp_path):
    """A 3D stage over every slice of a 60- and a 480-slice 192x192 scan (streaming layout,
    each in a fresh process). Holding the 480-slice scan's float32 logits would take
    4 x 420 x 192 x 192 x 4 B = 248 MB more than the 60-slice one's, its float input 62 MB
    more; streamed, the peak grows by a few MB at most."""
    from .synthetic import make_ct

    peaks = {}
    for n in (60, 480):
        hu, _ = make_ct((n, 192, 192), kidney_slices=(n // 2 - 6, n // 2 + 6), seed=3)
        path = write_ras_nifti(tmp_path / f"long_{n}.nii.gz", hu, (2.0, 1.0, 1.0))
        res = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        peaks[n] = json.loads(res.stdout.strip().splitlines()[-1])
        assert peaks[n]["labelled"] >= 10
    assert peaks[480]["windows"] == 59 * 25 and peaks[60]["windows"] == 7 * 25
    growth = peaks[480]["peak_mb"] - peaks[60]["peak_mb"]
    assert growth < 25, peaks


def test_kidedge_infer_runs_a_3d_package(tiny3d, tmp_path):
    """``kidedge infer`` on a RAS (x, y, z) NIfTI with the 3D package: the written label map
    has the input's shape and affine and holds Segmenter.segment's post-processed labels."""
    from click.testing import CliRunner

    from kidedge.cli import main
    from kidedge.runtime.backends.registry import select_backend
    from kidedge.runtime.engine import Segmenter

    data, pkg = tiny3d
    kits = load_scan(data / "case_00000" / "imaging.nii.gz")
    ras_path = write_ras_nifti(tmp_path / "ras.nii.gz", np.asarray(kits.array), kits.spacing)
    out = tmp_path / "ras_seg.nii.gz"
    profile = tmp_path / "profile.json"
    r = CliRunner().invoke(main, ["infer", str(ras_path), "--model", str(pkg.source), "-o", str(out),
                                  "--backend", "onnxruntime", "--precision", "fp32", "--profile", str(profile)])
    assert r.exit_code == 0, r.output
    assert "latency/window" in r.output and "stage 2 skipped" in r.output
    img, src = nib.load(str(out)), nib.load(str(ras_path))
    assert img.shape == src.shape and np.allclose(img.affine, src.affine)
    with Segmenter(pkg, select_backend(pkg, "onnxruntime", "fp32"), threads=1) as seg:
        result = seg.segment(load_scan(ras_path))
    ras = load_scan(ras_path)
    assert np.array_equal(ras.to_canonical(np.asarray(img.dataobj)), result.labels.to_dense())
    assert result.gating["enabled"] and len(result.gating["regions"]) == 2 and result.volumes_ml["kidney_ml"] > 0
    rep = json.loads(profile.read_text())["scans"][0]
    assert rep["gating"]["windows_stage2"] == result.gating["windows_stage2"]
    assert rep["profile"]["counters"]["segment_windows"] == result.gating["windows_stage2"]
