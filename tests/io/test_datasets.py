"""Dataset layouts and label normalisation (0 background, 1 kidney, 2 tumour, 3 cyst)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from kidedge.errors import KidedgeError
from kidedge.io import discover_cases, load_label_map
from kidedge.io.labels import kidedge_value_of, mapping_from_dataset_json
from tests.io.conftest import kits19_affine, random_volume, ras_affine, write_nifti

SHAPE = (6, 8, 9)


def _labels(values=(0, 1, 2, 3), seed=0):
    rng = np.random.default_rng(seed)
    return rng.choice(np.array(values, dtype=np.uint8), size=SHAPE)


def _kits_case(root, case, label_name="segmentation.nii.gz", image=True, labels=None, instances=False):
    d = root / case
    d.mkdir(parents=True)
    if image:
        write_nifti(d / "imaging.nii.gz", random_volume(SHAPE), kits19_affine())
    lab = _labels() if labels is None else labels
    write_nifti(d / label_name, lab, kits19_affine())
    if instances:
        (d / "instances").mkdir()
    return lab


def test_kits19_layout(tmp_path):
    lab = _kits_case(tmp_path, "case_00001", labels=_labels((0, 1, 2)))
    _kits_case(tmp_path, "case_00000")
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["case_00000", "case_00001"]
    assert all(c.layout == "kits19" and c.image.name == "imaging.nii.gz" for c in cases)
    labels, scan = cases[1].load_label()
    np.testing.assert_array_equal(labels, lab)
    assert labels.dtype == np.uint8 and np.shares_memory(labels, scan.array)  # no copy


def test_half_written_hidden_case_folders_are_skipped(tmp_path):
    _kits_case(tmp_path, "case_00000")
    _kits_case(tmp_path, ".case_00001.partial")
    assert [c.case_id for c in discover_cases(tmp_path)] == ["case_00000"]


def test_kits21_and_kits23_layouts(tmp_path):
    _kits_case(tmp_path / "k21", "case_00000", label_name="aggregated_MAJ_seg.nii.gz")
    (tmp_path / "k21" / "case_00000" / "aggregated_OR_seg.nii.gz").write_bytes(b"ignored")
    _kits_case(tmp_path / "k23", "case_00000", instances=True)
    (k21,) = discover_cases(tmp_path / "k21")
    (k23,) = discover_cases(tmp_path / "k23")
    assert (k21.layout, k21.label.name) == ("kits21", "aggregated_MAJ_seg.nii.gz")
    assert (k23.layout, k23.label.name) == ("kits23", "segmentation.nii.gz")
    assert set(np.unique(k23.load_label()[0])) == {0, 1, 2, 3}


def test_labels_only_kits_folder(tmp_path):
    _kits_case(tmp_path, "case_00007", image=False)
    (case,) = discover_cases(tmp_path)
    assert case.image is None and case.label.name == "segmentation.nii.gz"


def test_single_case_folder(tmp_path):
    _kits_case(tmp_path, "case_00003")
    (case,) = discover_cases(tmp_path / "case_00003")
    assert case.case_id == "case_00003"


def _decathlon(root, labels_json, nnunet=False, raw_values=(0, 1, 2)):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"name": "kidney", "labels": labels_json}))
    raws = {}
    for i in (1, 2):
        name = f"kidney_{i:03d}"
        img_name = f"{name}_0000.nii.gz" if nnunet else f"{name}.nii.gz"
        write_nifti(root / "imagesTr" / img_name, random_volume((9, 8, 6)), ras_affine())
        if nnunet:
            write_nifti(root / "imagesTr" / f"{name}_0001.nii.gz", random_volume((9, 8, 6)), ras_affine())
        raw = np.random.default_rng(i).choice(np.array(raw_values, np.uint8), size=(9, 8, 6))
        write_nifti(root / "labelsTr" / f"{name}.nii.gz", raw, ras_affine())
        raws[name] = raw
    (root / "imagesTr" / "._kidney_001.nii.gz").write_bytes(b"macOS resource fork")
    return raws


def test_decathlon_layout_with_value_to_name_labels(tmp_path):
    # Decathlon / nnU-Net v1 style, with an extra structure and tumour before kidney
    raws = _decathlon(tmp_path, {"0": "background", "1": "Tumor", "2": "Kidney", "3": "Ureter"},
                      raw_values=(0, 1, 2, 3))
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["kidney_001", "kidney_002"]
    assert all(c.layout == "decathlon" and c.image.parent.name == "imagesTr" for c in cases)
    labels, scan = cases[0].load_label()
    expected = np.choose(raws["kidney_001"], [0, 2, 1, 0]).astype(np.uint8)
    np.testing.assert_array_equal(scan.from_canonical(labels), expected)
    # the same mapping is found from the path alone
    labels2, _ = load_label_map(cases[0].label)
    np.testing.assert_array_equal(labels2, labels)


def test_nnunet_v2_layout_with_name_to_value_labels_and_regions(tmp_path):
    _decathlon(tmp_path, {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3,
                          "masses": [2, 3]}, nnunet=True, raw_values=(0, 1, 2, 3))
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["kidney_001", "kidney_002"]  # channel 0001 skipped
    assert cases[0].image.name == "kidney_001_0000.nii.gz"
    assert cases[0].label_mapping == {0: 0, 1: 1, 2: 2, 3: 3}


def test_label_names():
    assert [kidedge_value_of(n) for n in ("background", "Kidney", "kidney_left", "tumour",
                                          "Renal cell carcinoma", "kidney cyst", "artery")] == [0, 1, 1, 2, 2, 3, 0]


def test_bad_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(KidedgeError, match="dataset.json"):
        mapping_from_dataset_json(tmp_path / "dataset.json")


def test_flat_folder(tmp_path):
    write_nifti(tmp_path / "case_00001.nii.gz", _labels(), kits19_affine())
    write_nifti(tmp_path / "case_00000.nii", _labels(), kits19_affine())
    imgs = discover_cases(tmp_path)
    assert [(c.case_id, c.layout, c.label) for c in imgs] == [("case_00000", "flat", None), ("case_00001", "flat", None)]
    labs = discover_cases(tmp_path, flat_as="label")
    assert [c.image for c in labs] == [None, None] and labs[1].label.name == "case_00001.nii.gz"


def test_empty_or_missing_root(tmp_path):
    with pytest.raises(KidedgeError, match="no cases found"):
        discover_cases(tmp_path)
    with pytest.raises(KidedgeError, match="no such folder"):
        discover_cases(tmp_path / "missing")


def test_unknown_label_values_are_refused(tmp_path):
    p = write_nifti(tmp_path / "seg.nii.gz", _labels((0, 1, 7)), kits19_affine())
    with pytest.raises(KidedgeError, match=r"label values \[7\]"):
        load_label_map(p)


def test_float_and_int16_label_maps_are_normalised(tmp_path):
    lab = _labels()
    for dtype in (np.float32, np.int16):
        p = write_nifti(tmp_path / f"seg_{np.dtype(dtype).name}.nii.gz", lab.astype(dtype), kits19_affine())
        labels, _ = load_label_map(p)
        assert labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, lab)
    p = write_nifti(tmp_path / "frac.nii.gz", lab.astype(np.float32) + 0.5, kits19_affine())
    with pytest.raises(KidedgeError, match="not a label map"):
        load_label_map(p)
    one_off = lab.astype(np.float32)
    one_off[2, 3, 4] = 1.25  # min and max are integers, one voxel is not
    p = write_nifti(tmp_path / "one.nii.gz", one_off, kits19_affine())
    with pytest.raises(KidedgeError, match="non-integer"):
        load_label_map(p)


def test_scaled_label_map(tmp_path):
    lab = _labels()
    img = nib.Nifti1Image((lab * 2).astype(np.int16), kits19_affine())
    img.header.set_slope_inter(0.5, 0.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    labels, _ = load_label_map(tmp_path / "scaled.nii.gz")
    np.testing.assert_array_equal(labels, lab)
