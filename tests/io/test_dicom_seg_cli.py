"""``kidedge infer --format dicom-seg``: the SEG lands where the NIfTI output does; bad
input to this path is one line, exit 2, nothing written, before any segmentation."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from kidedge.cli import main  # noqa: E402
from tests.runtime.synthetic import kits_affine, make_ct, make_single_package, write_nifti  # noqa: E402

from .seg_geometry import (  # noqa: E402
    SourceSeries,
    nifti_pixels,
    repaired_copy,
    seg_pixels_pydicom,
    write_ct_series,
)


def _infer(*args):
    return CliRunner().invoke(main, ["infer", *map(str, args)])


@pytest.fixture
def package(tmp_path):
    return make_single_package(tmp_path / "pkg")


def _ct_series(folder, drop=()):
    hu, truth = make_ct(shape=(10, 32, 32), kidney_slices=(3, 8))
    # positions downwards (file order = canonical order) and rows/columns rotated 180 degrees
    write_ct_series(folder, [(20.0, 25.0, 50.0 - 2.0 * k) for k in range(10)], iop=(-1, 0, 0, 0, -1, 0),
                    shape=(32, 32), spacing=(0.8, 0.8), drop=drop, hu=hu[:, ::-1, ::-1])
    return truth


def test_infer_dicom_seg_matches_nifti_output(tmp_path, package):
    truth = _ct_series(tmp_path / "ct")
    r = _infer(tmp_path / "ct", "--format", "dicom-seg", "-o", tmp_path / "out", "--model", package)
    assert r.exit_code == 0, r.output
    seg = tmp_path / "out" / "ct_seg.dcm"
    assert seg.is_file() and (tmp_path / "out" / "ct_seg.volumes.json").is_file()
    r = _infer(tmp_path / "ct", "-o", tmp_path / "out" / "ct.nii.gz", "--model", package)
    assert r.exit_code == 0, r.output
    source = SourceSeries(tmp_path / "ct")
    from_seg = seg_pixels_pydicom(seg, source)
    np.testing.assert_array_equal(from_seg, nifti_pixels(tmp_path / "out" / "ct.nii.gz", source))
    assert from_seg.size == int((truth > 0).sum())  # the tiny model finds the phantom's labels exactly


def test_infer_dicom_seg_bad_inputs(tmp_path, package):
    hu, _ = make_ct(shape=(6, 16, 16), kidney_slices=(2, 4))
    nii = write_nifti(tmp_path / "ct.nii.gz", hu, kits_affine())
    _ct_series(tmp_path / "anon", drop=["FrameOfReferenceUID"])
    _ct_series(tmp_path / "ct")
    out = tmp_path / "out"
    for args, fragment in (
            ((nii, "--format", "dicom-seg"), "needs a DICOM series"),
            ((tmp_path / "anon", "--format", "dicom-seg"), "no FrameOfReferenceUID"),
            ((tmp_path / "ct", "--format", "dicom-seg", "-o", out / "x.nii.gz"), "--format is dicom-seg"),
            ((tmp_path / "ct", "-o", out / "x.dcm"), "--format is nifti"),
            ((tmp_path / "ct", "--format", "dicom-seg", "-o", tmp_path / "ct" / "seg.dcm"), "inside the source series")):
        r = _infer(*args, "--model", package, *(("-o", out) if "-o" not in args else ()))
        assert r.exit_code == 2, (args, r.output)
        err = [line for line in r.output.splitlines() if line.startswith("kidedge: error")]
        assert len(err) == 1 and fragment in err[0], r.output
        assert "Traceback" not in r.output
    assert not out.exists() or not any(out.rglob("*"))
    assert len(list((tmp_path / "ct").iterdir())) == 10


@pytest.mark.shared_data
@pytest.mark.parametrize("series", ["ct-dicom-sample", pytest.param("ircadb-01/PATIENT_DICOM", marks=pytest.mark.slow)])
def test_real_series_with_the_built_in_model(tmp_path, series):
    """Whatever the built-in model labels on a real series (it was trained on synthetic CT:
    how much it labels changes with the model), SEG and NIfTI put it on the same pixels.
    ircadb-01 has kidneys, so a run that labels nothing there fails (it would compare
    nothing); the DICOM sample lies above the kidneys, and today's model rightly labels
    nothing on it: then the SEG must hold no labelled pixel either."""
    from .conftest import SHARED_DATA

    if not (SHARED_DATA / series).is_dir():
        pytest.skip("../shared/data is not available")
    ct = repaired_copy(SHARED_DATA / series, tmp_path / "ct")
    for args in (("--format", "dicom-seg", "-o", tmp_path / "out" / "ct.dcm"), ("-o", tmp_path / "out" / "ct.nii.gz")):
        r = _infer(ct, *args)
        assert r.exit_code == 0, r.output
    source = SourceSeries(ct)
    from_seg = seg_pixels_pydicom(tmp_path / "out" / "ct.dcm", source)
    if series.startswith("ircadb-01"):
        assert from_seg.size > 0
    np.testing.assert_array_equal(from_seg, nifti_pixels(tmp_path / "out" / "ct.nii.gz", source))
