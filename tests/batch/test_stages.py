"""The batch stages without Ray: read -> segment -> write gives what ``kidedge infer``
gives, a bad scan becomes a recorded error that later stages pass through."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from kidedge.batch.plan import find_scans, finished_record, plan_items
from kidedge.batch.stages import ROW_KEYS, SegmentStage, new_row, read_stage, write_stage
from kidedge.batch.summary import summary_line
from kidedge.runtime.command import infer_command


def _run(items, package, fmt="nifti"):
    stage = SegmentStage(model=str(package), threads=1)
    try:
        rows = []
        for it in items:
            row = pickle.loads(pickle.dumps(read_stage(new_row(it), fmt=fmt)))  # rows travel pickled
            row = pickle.loads(pickle.dumps(stage(row)))
            rows.append(write_stage(row, package_name=stage.engine.package_name, fmt=fmt))
    finally:
        stage.close()
    assert all(set(r) == set(ROW_KEYS) for r in rows)
    return {Path(r["scan"]).name: r for r in rows}


def test_stages_write_what_infer_writes_and_bad_scans_are_recorded(tmp_path, archive, package):
    root, truths = archive
    scans, base = find_scans(root)
    items = plan_items(scans, base, tmp_path / "out")
    rows = _run(items, package)
    assert rows["broken.nii.gz"]["error"] and rows["notes.nii"]["error"]
    assert all("\n" not in r["error"] for r in (rows["broken.nii.gz"], rows["notes.nii"]))
    assert rows["broken.nii.gz"]["t_segment"] == 0.0  # never reached the segmenter
    assert summary_line(rows["notes.nii"])["status"] == "failed"
    assert not list((tmp_path / "out").glob("site_b/broken*")) and not list((tmp_path / "out").glob("site_b/notes*"))
    for rel in truths:
        scan = root / rel
        row = rows[scan.name]
        assert row["error"] is None and row["payload"] is None
        ref = infer_command([str(scan)], output=str(tmp_path / "ref" / f"{scan.parent.name}.nii.gz"),
                            model=str(package), gate=False)
        assert ref == 0
        got, want = nib.load(row["output"]), nib.load(tmp_path / "ref" / f"{scan.parent.name}.nii.gz")
        np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj))
        np.testing.assert_array_equal(got.affine, want.affine)
        record = json.loads(Path(row["volumes_json"]).read_text())
        ref_record = json.loads((tmp_path / "ref" / f"{scan.parent.name}.volumes.json").read_text())
        ref_volumes = ref_record["volumes"]
        assert record["volumes"] == ref_volumes and record["volumes"]["classes"]["kidney_ml"] > 0
        assert record["warnings"] == ref_record["warnings"] and record["warnings"]  # the review's notes travel too
        item = next(i for i in items if i.scan == row["scan"])
        assert finished_record(item, "test-single") == record
        line = summary_line(row)
        assert line["status"] == "done" and line["kidney_ml"] == round(ref_volumes["classes"]["kidney_ml"], 3)
        assert line["finished"].endswith("+00:00") and line["segment_s"] > 0


def test_dicom_seg_format(tmp_path, package):
    pytest.importorskip("highdicom")
    import pydicom

    from tests.io.seg_geometry import write_ct_series
    from tests.runtime.synthetic import kits_affine, make_ct, write_nifti

    # a DICOM series whose pixels hold a CT with kidneys (native = canonical flipped in z)
    hu, _ = make_ct(shape=(8, 32, 32), kidney_slices=(2, 6))
    series = tmp_path / "in" / "ct_series"
    # positions upwards: native slice k is canonical slice 7 - k
    write_ct_series(series, [(0.0, 0.0, 2.0 * k) for k in range(8)], shape=(32, 32), spacing=(1.0, 1.0),
                    hu=hu[::-1])
    write_nifti(tmp_path / "in" / "plain.nii.gz", hu, kits_affine())
    scans, base = find_scans(tmp_path / "in")
    rows = _run(plan_items(scans, base, tmp_path / "out", fmt="dicom-seg"), package, fmt="dicom-seg")
    assert "needs a DICOM series" in rows["plain.nii.gz"]["error"]
    assert rows["plain.nii.gz"]["t_segment"] == 0.0
    seg = rows["ct_series"]
    assert seg["error"] is None and seg["output"].endswith("ct_series_seg.dcm")
    ds = pydicom.dcmread(seg["output"])
    assert ds.Modality == "SEG" and int(ds.NumberOfFrames) > 0
    assert [s.SegmentLabel for s in ds.SegmentSequence][0] == "Kidney"
