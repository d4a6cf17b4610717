"""kidedge infer runs the post-processing review: its warnings reach the volumes JSON and
stderr (one line each), and what it removes is gone from the written label map."""

import json

import nibabel as nib
import numpy as np
from click.testing import CliRunner

from kidedge.cli import main

from .synthetic import KIDNEY_HU, TUMOUR_HU, kits_affine, make_ct, write_nifti


def test_one_kidney_and_a_false_mass_are_reported(tmp_path, cascade_package):
    # a bigger body than the default fixture, so the kidneys are a few mL at 2 x 1 x 1 mm
    hu, truth = make_ct(shape=(24, 128, 128), kidney_slices=(4, 20))
    right = np.zeros(hu.shape, bool)
    right[:, :, :64] = True  # the patient's right: canonical columns below the middle
    hu[(truth > 0) & right] = 20  # take the right kidney away (body tissue)
    truth[right] = 0
    # a bright ragged streak in the front of the abdomen, through no kidney: a "tumour" to the model
    hu[6:18, 34:37, 30:100] = TUMOUR_HU
    assert (hu == KIDNEY_HU).any()
    scan = write_nifti(tmp_path / "ct.nii.gz", hu, kits_affine())
    out = tmp_path / "out" / "ct_seg.nii.gz"
    r = CliRunner().invoke(main, ["infer", str(scan), "-o", str(out), "--model", str(cascade_package)])
    assert r.exit_code == 0, r.output
    record = json.loads(out.with_name("ct_seg.volumes.json").read_text())
    warnings = record["warnings"]
    assert any(w.startswith("only one kidney found (left") for w in warnings), warnings
    assert any("labelled tumour/cyst not seated on a kidney" in w for w in warnings), warnings
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("kidedge: warning:")]
    assert len(lines) == len(warnings)
    assert all(ln.endswith(w) for ln, w in zip(lines, warnings, strict=True))
    labels = np.asarray(nib.load(str(out)).dataobj)
    assert not labels[6:18, 34:37, 30:100].any()  # the streak is gone from the written labels
    assert labels[truth == 1].all() and not labels[:, :, :64].any()
    assert record["volumes"]["sides"]["right"]["kidney_ml"] == 0
