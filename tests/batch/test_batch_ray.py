"""``kidedge batch`` end to end on a private local Ray: good and bad scans, outputs as
``kidedge infer`` writes them, failures listed, a rerun skips what is finished and redoes
what is not. Slow (two Ray starts); skipped without Ray."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from kidedge.batch.pipeline import run_batch
from kidedge.runtime.command import infer_command

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "batch_summary.csv", newline="") as f:
        return {Path(r["scan"]).name: r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_batch_on_local_ray(tmp_path, archive, package):
    root, truths = archive
    out = tmp_path / "out"
    assert run_batch(root, out, workers=2, model=str(package), gate=False) == 2
    assert not ray.is_initialized()  # the private Ray was shut down
    rows = _summary(out)
    assert {k: v["status"] for k, v in rows.items()} == {
        "imaging.nii.gz": "done", "patient_7.nii.gz": "done", "broken.nii.gz": "failed", "notes.nii": "failed"}
    assert rows["broken.nii.gz"]["error"] and rows["notes.nii"]["error"]
    outputs = {}
    for rel in truths:
        scan = root / rel
        row = rows[scan.name]
        assert float(row["seconds"]) > 0 and float(row["kidney_ml"]) > 0
        ref = tmp_path / "ref" / f"{scan.parent.name}.nii.gz"
        assert infer_command([str(scan)], output=str(ref), model=str(package), gate=False) == 0
        got = nib.load(row["output"])
        np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(nib.load(ref).dataobj))
        np.testing.assert_array_equal(got.affine, nib.load(ref).affine)
        outputs[scan.name] = Path(row["output"])
    kept = outputs["patient_7.nii.gz"].stat().st_mtime_ns
    # one finished output damaged after the run: it is no longer finished
    damaged = outputs["imaging.nii.gz"]
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert run_batch(root, out, workers=1, model=str(package), gate=False) == 2
    rows = _summary(out)
    assert {k: v["status"] for k, v in rows.items()} == {
        "imaging.nii.gz": "done", "patient_7.nii.gz": "skipped", "broken.nii.gz": "failed", "notes.nii": "failed"}
    assert outputs["patient_7.nii.gz"].stat().st_mtime_ns == kept  # not rewritten
    assert float(rows["patient_7.nii.gz"]["kidney_ml"]) > 0  # volumes of skipped scans still listed
    ref = tmp_path / "ref" / "case_00000.nii.gz"
    np.testing.assert_array_equal(np.asarray(nib.load(damaged).dataobj), np.asarray(nib.load(ref).dataobj))
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary files left
    assert not os.environ.get("RAY_ADDRESS")
