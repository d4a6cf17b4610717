"""Which scans a batch finds, where their results go, and what counts as finished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kidedge.batch.plan import file_digest, find_scans, finished_record, plan_items
from kidedge.errors import KidedgeError

from .conftest import write_case


def _rel(paths, root):
    return sorted(str(Path(p).resolve().relative_to(root.resolve())) for p in paths)


def test_tree_finds_nifti_and_dicom_series_at_any_depth(tmp_path, archive):
    root, _ = archive
    pytest.importorskip("pydicom")
    from tests.io.seg_geometry import write_ct_series

    write_ct_series(root / "site_c/p1/CT", [(0.0, 0.0, 2.0 * k) for k in range(3)])
    (root / ".hidden").mkdir()
    write_case(root / ".hidden/x.nii.gz")
    out = root / "results"  # an output folder inside the input is never searched
    write_case(out / "old.nii.gz")
    scans, base = find_scans(root, out)
    assert base == root
    assert _rel(scans, root) == ["kits/case_00000/imaging.nii.gz", "site_b/broken.nii.gz",
                                 "site_b/notes.nii", "site_b/patient_7.nii.gz", "site_c/p1/CT"]


def test_list_file_relative_entries_comments_and_missing(tmp_path, archive):
    root, _ = archive
    lst = tmp_path / "scans.txt"
    lst.write_text("# my scans\n\narchive/site_b/patient_7.nii.gz\n"
                   f"{root / 'kits'}\narchive/missing.nii.gz\n")
    scans, base = find_scans(lst)
    assert _rel(scans, tmp_path) == ["archive/kits/case_00000/imaging.nii.gz", "archive/missing.nii.gz",
                                     "archive/site_b/patient_7.nii.gz"]
    items = plan_items(scans, base, tmp_path / "out")
    assert {Path(i.output).relative_to(tmp_path / "out").as_posix() for i in items} == {
        "site_b/patient_7_seg.nii.gz", "kits/case_00000/case_00000_seg.nii.gz", "missing_seg.nii.gz"}


def test_outputs_mirror_folders_and_same_names_are_numbered(tmp_path):
    a, b = tmp_path / "in/a/ct7.nii.gz", tmp_path / "in/b/ct7.nii.gz"
    for p in (a, b):
        write_case(p)
    items = plan_items([a, b, a], tmp_path / "in", tmp_path / "out", fmt="dicom-seg")
    outs = [Path(i.output).relative_to(tmp_path / "out").as_posix() for i in items]
    assert outs == ["a/ct7_seg.dcm", "b/ct7_seg.dcm", "a/ct7_2_seg.dcm"]
    assert items[0].volumes_json.endswith("a/ct7_seg.volumes.json")
    with pytest.raises(KidedgeError, match="unknown output format"):
        plan_items([a], tmp_path / "in", tmp_path / "out", fmt="png")


def test_nothing_to_do_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(KidedgeError, match="no scans found"):
        find_scans(tmp_path / "empty")
    with pytest.raises(KidedgeError, match="no such file"):
        find_scans(tmp_path / "nowhere")


def test_finished_means_output_and_record_agree(tmp_path):
    scan = tmp_path / "in/s.nii.gz"
    write_case(scan)
    (item,) = plan_items([scan], tmp_path / "in", tmp_path / "out")
    assert finished_record(item, "pkg") is None  # nothing written yet
    out = Path(item.output)
    out.parent.mkdir(parents=True)
    out.write_bytes(b"label map bytes")
    size, digest = file_digest(out)
    record = {"scan": item.scan, "segmentation": item.output, "package": "pkg",
              "output_bytes": size, "output_sha256": digest, "volumes": {}}
    assert finished_record(item, "pkg") is None  # output without its record: not finished
    Path(item.volumes_json).write_text(json.dumps(record))
    assert finished_record(item, "pkg") == record
    assert finished_record(item, "another-model") is None
    out.write_bytes(b"label map")  # truncated or replaced since
    assert finished_record(item, "pkg") is None
    out.write_bytes(b"label map bytes")
    Path(item.volumes_json).write_text(json.dumps(record)[:-5])  # a torn record
    assert finished_record(item, "pkg") is None
