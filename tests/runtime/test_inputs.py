import pytest

from kidedge.errors import KidedgeError
from kidedge.runtime.inputs import expand_inputs, plan_outputs


def _touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_folder_expansion_skips_label_maps_and_finds_dicom_and_kits(tmp_path):
    root = tmp_path / "in"
    _touch(root / "b.nii.gz")
    _touch(root / "a.nii")
    _touch(root / "a_seg.nii.gz")          # an earlier kidedge output
    _touch(root / "notes.txt")
    _touch(root / "case_00007" / "imaging.nii.gz")
    _touch(root / "case_00007" / "segmentation.nii.gz")
    dcm = root / "series1"
    dcm.mkdir()
    (dcm / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    got = expand_inputs([root])
    assert got == [root / "a.nii", root / "b.nii.gz", root / "case_00007" / "imaging.nii.gz", dcm]
    # a DICOM folder named directly is one scan
    assert expand_inputs([dcm]) == [dcm]


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(KidedgeError, match="no scans"):
        expand_inputs([tmp_path / "e"])


def test_output_names(tmp_path):
    scans = [tmp_path / "x" / "case_1" / "imaging.nii.gz", tmp_path / "y" / "case_1" / "imaging.nii.gz",
             tmp_path / "abdomen.nii", tmp_path / "abdomen.nii.gz"]
    jobs = plan_outputs(scans, tmp_path / "out")
    assert [j.output.name for j in jobs] == ["case_1_seg.nii.gz", "case_1_2_seg.nii.gz", "abdomen_seg.nii.gz",
                                             "abdomen_2_seg.nii.gz"]
    assert jobs[0].volumes_json.name == "case_1_seg.volumes.json"
    one = plan_outputs([tmp_path / "abdomen.nii"], tmp_path / "mine.nii.gz")
    assert one[0].output == tmp_path / "mine.nii.gz"
    with pytest.raises(KidedgeError, match="must be a folder"):
        plan_outputs(scans, tmp_path / "mine.nii.gz")
    assert plan_outputs([tmp_path / "abdomen.nii"], None)[0].output.as_posix() == "kidedge_out/abdomen_seg.nii.gz"
