"""write_phantom_dataset and ``kidedge phantom``: layout, labels from a dataset, montage,
refusing to overwrite, and (with ../shared/data) real KiTS19 label maps."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage

from kidedge.cli import main
from kidedge.errors import KidedgeError
from kidedge.phantom import dataset, make_phantom, write_phantom_dataset
from kidedge.phantom import tissues as T
from kidedge.phantom.generate import canonical_affine

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def small_geometry(monkeypatch):
    """Procedural cases at a test-sized geometry (the real one is 512x512x60+)."""
    monkeypatch.setattr(dataset, "procedural_geometry",
                        lambda rng: ((12, 96, 96), (5.0, 4.0, 4.0)))


def _write_label_dataset(root: Path, cases: dict[str, np.ndarray], spacing) -> None:
    for name, lab in cases.items():
        (root / name).mkdir(parents=True)
        nib.save(nib.Nifti1Image(lab, canonical_affine(spacing)), str(root / name / "segmentation.nii.gz"))


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_procedural_geometry_is_realistic():
    for s in range(200):
        (n, rows, cols), (sz, sr, sc) = dataset.procedural_geometry(np.random.default_rng(s))
        assert (rows, cols) == (512, 512)
        assert 0.6 <= sr == sc <= 1.0
        assert 0.5 <= sz <= 5.0
        assert 60 <= n <= 600


def test_writes_kits_layout_and_montage(tmp_path, small_geometry):
    out = tmp_path / "set"
    written = write_phantom_dataset(out, cases=2, seed=3)
    assert written == [out / "case_00000", out / "case_00001"]
    for case in written:
        img = nib.load(str(case / "imaging.nii.gz"))
        seg = nib.load(str(case / "segmentation.nii.gz"))
        assert img.get_data_dtype() == np.int16 and seg.get_data_dtype() == np.uint8
        assert img.shape == seg.shape == (12, 96, 96)
        assert nib.aff2axcodes(img.affine) == ("I", "P", "L")
        assert np.allclose(img.affine, seg.affine)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
    assert (out / "montage.png").read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    # Deterministic for a seed, and each case has its own seed.
    again = write_phantom_dataset(tmp_path / "again", cases=2, seed=3, montage=False)
    a0 = np.asarray(nib.load(str(written[0] / "imaging.nii.gz")).dataobj)
    assert np.array_equal(a0, np.asarray(nib.load(str(again[0] / "imaging.nii.gz")).dataobj))
    a1 = np.asarray(nib.load(str(written[1] / "imaging.nii.gz")).dataobj)
    assert not np.array_equal(a0, a1)
    assert not (tmp_path / "again" / "montage.png").exists()


def test_refuses_to_overwrite_cases(tmp_path, small_geometry):
    out = tmp_path / "set"
    write_phantom_dataset(out, cases=1, seed=0, montage=False)
    before = _digest(out)
    with pytest.raises(KidedgeError, match="already exists"):
        write_phantom_dataset(out, cases=2, seed=1)
    assert _digest(out) == before
    assert not (out / "case_00001").exists()  # nothing written before refusing


def test_cli_phantom_and_its_errors(tmp_path, small_geometry):
    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(main, ["phantom", str(out), "--cases", "1", "--seed", "4"])
    assert res.exit_code == 0, res.output
    assert (out / "case_00000" / "segmentation.nii.gz").is_file()
    res = runner.invoke(main, ["phantom", str(out), "--cases", "1"])
    assert res.exit_code == 2
    assert "already exists" in res.output and "Traceback" not in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(main, ["phantom", str(tmp_path / "x"), "--from-labels", str(empty)])
    assert res.exit_code == 2 and str(empty) in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x").exists()


def test_from_labels_cycles_through_sources(tmp_path):
    spacing = (4.0, 3.0, 3.0)
    src = tmp_path / "labels"
    a = make_phantom(1, shape=(14, 96, 96), spacing=spacing).labels
    b = make_phantom(2, shape=(10, 80, 96), spacing=spacing).labels
    _write_label_dataset(src, {"case_00000": a, "case_00001": b}, spacing)
    out = tmp_path / "out"
    written = write_phantom_dataset(out, cases=3, from_labels=src, seed=9)
    segs = [np.asarray(nib.load(str(c / "segmentation.nii.gz")).dataobj) for c in written]
    imgs = [np.asarray(nib.load(str(c / "imaging.nii.gz")).dataobj) for c in written]
    assert np.array_equal(segs[0], a) and np.array_equal(segs[1], b) and np.array_equal(segs[2], a)
    assert imgs[1].shape == b.shape
    assert not np.array_equal(imgs[0], imgs[2])  # same anatomy, a new phantom
    src_affine = nib.load(str(src / "case_00000" / "segmentation.nii.gz")).affine
    assert np.allclose(nib.load(str(written[2] / "imaging.nii.gz")).affine, src_affine)


@pytest.mark.shared_data
def test_kits19_labels_end_to_end(tmp_path, shared_data):
    """The issue's check: `kidedge phantom OUT --cases 3 --from-labels kits19-labels` gives
    segmentations equal to the source, kidney mean HU in 100..300, fat near -100 HU."""
    files = sorted((shared_data / "kits19-labels").glob("case_*/segmentation.nii.gz"),
                   key=lambda p: p.stat().st_size)[:3]
    src = tmp_path / "src"
    src.mkdir()
    for f in files:  # the three smallest cases keep the test quick
        os.symlink(f.parent, src / f.parent.name)
    files.sort(key=lambda p: p.parent.name)  # output case i takes the i-th source case
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["phantom", str(out), "--cases", "3", "--from-labels", str(src)])
    assert res.exit_code == 0, res.output
    assert (out / "montage.png").read_bytes()[:8] == PNG_MAGIC
    for i, f in enumerate(files):
        source = nib.load(str(f))
        seg_img = nib.load(str(out / f"case_{i:05d}" / "segmentation.nii.gz"))
        seg = np.asarray(seg_img.dataobj)
        assert np.array_equal(seg, np.asarray(source.dataobj))
        assert np.allclose(seg_img.affine, source.affine)
        hu = np.asarray(nib.load(str(out / f"case_{i:05d}" / "imaging.nii.gz")).dataobj)
        assert 100 < hu[seg == 1].mean() < 300
        if i > 0:
            continue
        # Regenerate the first case in memory (same seed) to know which voxels are fat.
        ph = make_phantom(dataset.case_seed(0, i), spacing=source.header.get_zooms(),
                          labels=np.asarray(source.dataobj))
        assert np.array_equal(ph.hu, hu)
        fat = ndimage.binary_erosion(ph.tissues == T.SUBCUT_FAT, iterations=2)
        assert -120 < hu[fat].mean() < -80
        # Real kidneys get a cortex and an inner layer.
        kid = ph.tissues[seg == 1]
        assert (kid == T.KIDNEY_CORTEX).mean() > 0.2
        assert np.isin(kid, [T.KIDNEY_MEDULLA, T.KIDNEY_DEEP]).mean() > 0.05
