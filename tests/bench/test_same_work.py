"""The papers' way (region mode) and kidedge fp32 do the same work: on the built-in
cascade package and a phantom CT they give the same labels, so every speed ratio the
bench reports compares equal work."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

torch = pytest.importorskip("torch")


def test_papers_way_and_kidedge_fp32_give_the_same_labels(tmp_path):
    from kidedge.bench.baselines import PapersWay
    from kidedge.bench.kidedge_variant import KidedgeRunner
    from kidedge.demo import DEMO_SPACING
    from kidedge.metrics import dice
    from kidedge.package import default_package_path
    from kidedge.phantom import make_phantom

    package = default_package_path()
    if not package.exists():
        pytest.skip("no built-in model package")
    # the demo phantom's field of view at half the pixels per axis and 5 mm slices (fast)
    ph = make_phantom(0, shape=(32, 256, 256), spacing=(5.0, 2 * DEMO_SPACING[1], 2 * DEMO_SPACING[2]))
    scan = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ph.hu, ph.affine), str(scan))
    papers, ours = tmp_path / "papers.nii.gz", tmp_path / "kidedge.nii.gz"
    info = PapersWay(package, image=scan, out=papers, batch=8, threads=2).run()
    assert info["gating"]["slices_run_stage2"] > 0  # the built-in localiser finds the phantom's kidneys
    runner = KidedgeRunner({"model": str(package), "image": str(scan), "out": str(ours),
                            "backend": "onnxruntime", "precision": "fp32", "gate": True, "threads": 2})
    try:
        runner.run()
    finally:
        runner.close()
    a = np.asarray(nib.load(str(papers)).dataobj)
    b = np.asarray(nib.load(str(ours)).dataobj)
    assert a.shape == b.shape == ph.hu.shape
    for values in ((1, 2, 3), (1,), (2,), (3,)):
        pa, pb = np.isin(a, values), np.isin(b, values)
        if pa.any() or pb.any():
            assert dice(pa, pb) >= 0.99, values
    assert a.any()


def test_papers_way_reads_a_2_5d_segmenters_neighbours_beyond_its_region():
    """A 2.5D stage on a region: the neighbour channels of the region's end slices are the
    scan's slices beyond it (as the runtime reads them), repeated only at the scan's ends."""
    import dataclasses

    from kidedge.bench.baselines import PapersWay, _Timer
    from kidedge.package import ModelPackage, default_package_path

    package = default_package_path()
    if not package.exists():
        pytest.skip("no built-in model package")
    stage = next(s for s in ModelPackage.load(package).stages if s.roi is not None)
    stage = dataclasses.replace(stage, preprocess=stage.preprocess.replace(context=1))
    seen = []

    class Recording(PapersWay):
        def infer_volume(self, x, model):
            seen.append(x)
            return self.torch.zeros((x.shape[0], len(stage.output.labels), *x.shape[2:]))

    baseline = object.__new__(Recording)  # no package or models needed for one stage's flow
    baseline.torch, baseline.batch, baseline.models = torch, 4, {stage.name: None}
    # slice z is a flat z * 20 HU: which slice fed a channel shows in its brightest pixel
    volume = np.broadcast_to((np.arange(10) * 20.0)[:, None, None], (10, 64, 64)).copy()
    low, high = stage.preprocess.hu_window

    def slices_seen(box):
        baseline._stage_labels(stage, volume, (2.0, 2.0, 2.0), _Timer(), box=box)
        x = seen.pop()
        return np.rint((x.max(axis=(2, 3)) * (high - low) + low) / 20.0).astype(int).tolist()

    assert slices_seen((slice(3, 6), slice(8, 40), slice(4, 60))) == [[2, 3, 4], [3, 4, 5], [4, 5, 6]]
    assert slices_seen((slice(8, 10), slice(0, 64), slice(0, 64))) == [[7, 8, 9], [8, 9, 9]]
