"""kidedge infer on real data from ../shared/data (skipped when it is absent)."""

import json

import nibabel as nib
import numpy as np
import pytest

from kidedge.io import load_scan
from kidedge.runtime.command import infer_command

pytestmark = pytest.mark.shared_data


def test_real_dicom_series_gets_a_label_map_in_its_geometry(tmp_path, shared_data, single_package):
    folder = shared_data / "ct-dicom-sample"
    if not folder.is_dir():
        pytest.skip("no ct-dicom-sample")
    out = tmp_path / "dicom_seg.nii.gz"
    prof = tmp_path / "p.json"
    assert infer_command([str(folder)], output=str(out), model=str(single_package), profile=str(prof),
                         overlay=str(tmp_path / "o.png")) == 0
    scan = load_scan(folder)
    img = nib.load(str(out))
    assert img.shape == scan.native_shape
    np.testing.assert_allclose(img.affine, scan.affine, atol=1e-4)
    # The fixed threshold model marks 100..250 HU: contrast-enhanced organs exist in an
    # upper-abdomen series, air and fat do not.
    seg = np.asarray(img.dataobj)
    assert 0 < (seg > 0).mean() < 0.5
    p = json.loads(prof.read_text())["scans"][0]
    assert p["shape"] == list(scan.shape) and p["profile"]["slices"] == scan.shape[0]
    assert (tmp_path / "o.png").stat().st_size > 5000
