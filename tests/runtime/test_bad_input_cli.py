"""``kidedge infer`` on bad input, through the CLI: exit 2, one line, nothing written.

Complements test_command.py (missing scan, text file, 4D, NaN, missing model file,
tampered package, output == input) with the corrupt-file cases that are found only while
streaming, bad packages, and a batch where some scans are bad and the rest are written.
"""

import json
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from kidedge.cli import main

from .synthetic import kits_affine, make_ct, write_nifti


def _infer(*args):
    return CliRunner().invoke(main, ["infer", *map(str, args)])


def _assert_refused(r, out_dir, fragment):
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("kidedge: test-")]
    assert len(lines) == 1 and lines[0].startswith("kidedge: error:"), r.stderr
    assert fragment.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in r.output
    assert not out_dir.exists() or not any(out_dir.iterdir()), list(out_dir.iterdir())


def _scan(tmp_path, name="ct.nii.gz", shape=(16, 32, 32), seed=0, dtype=np.int16):
    hu, _ = make_ct(shape=shape, kidney_slices=(4, 12), seed=seed)
    return write_nifti(tmp_path / name, hu.astype(dtype), kits_affine())


def _corrupt_middle(src, dst):
    """Flip bytes in the middle of the deflate stream: header and trailer are intact, so
    only decompressing the data (during streaming) can find it."""
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 64):
        data[i] ^= 0x5A
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_gzip(tmp_path, single_package, keep):
    src = _scan(tmp_path)
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(src.read_bytes()[: int(src.stat().st_size * keep)])
    out = tmp_path / "o"
    _assert_refused(_infer(bad, "-o", out, "--model", single_package), out, "cut.nii.gz")


def test_corrupt_gzip_found_while_streaming(tmp_path, single_package):
    hu = np.random.default_rng(0).integers(-1000, 1000, size=(16, 32, 32)).astype(np.int16)  # incompressible
    src = write_nifti(tmp_path / "ct.nii.gz", hu, kits_affine())
    bad = _corrupt_middle(src, tmp_path / "bitrot.nii.gz")
    with pytest.raises(zlib.error):  # the file really is broken in the middle
        zlib.decompress(bad.read_bytes(), 31)
    out = tmp_path / "o"
    _assert_refused(_infer(bad, "-o", out, "--model", single_package), out, "bitrot.nii.gz")


def test_empty_file(tmp_path, single_package):
    f = tmp_path / "empty.nii.gz"
    f.write_bytes(b"")
    out = tmp_path / "o"
    _assert_refused(_infer(f, "-o", out, "--model", single_package), out, "empty.nii.gz")


def test_absurd_spacing(tmp_path, single_package):
    hu, _ = make_ct(shape=(8, 16, 16), kidney_slices=(2, 6))
    f = write_nifti(tmp_path / "metres.nii.gz", hu, kits_affine((0.002, 0.0008, 0.0008)))
    out = tmp_path / "o"
    _assert_refused(_infer(f, "-o", out, "--model", single_package), out, "spacing")


@pytest.mark.parametrize("pixdim", [0.0, float("nan")])
def test_zero_or_nan_pixdim_is_refused_not_read_as_1mm(tmp_path, single_package, pixdim):
    import nibabel as nib

    hu, _ = make_ct(shape=(8, 16, 16), kidney_slices=(2, 6))
    img = nib.Nifti1Image(hu, None)  # qform/sform unset: nibabel would make pixdim 0 into 1 mm
    img.header["pixdim"][1:4] = [0.8, 0.8, pixdim]
    f = tmp_path / "pixdim.nii.gz"
    nib.save(img, str(f))
    out = tmp_path / "o"
    _assert_refused(_infer(f, "-o", out, "--model", single_package), out, "voxel spacing")


def test_package_without_manifest(tmp_path, single_package):
    (single_package / "manifest.json").unlink()
    out = tmp_path / "o"
    _assert_refused(_infer(_scan(tmp_path), "-o", out, "--model", single_package), out, str(single_package.name))


def test_package_with_garbage_manifest(tmp_path, single_package):
    (single_package / "manifest.json").write_text("{ not json")
    out = tmp_path / "o"
    _assert_refused(_infer(_scan(tmp_path), "-o", out, "--model", single_package), out, "manifest")


def test_package_path_is_a_scan(tmp_path):
    scan = _scan(tmp_path)
    out = tmp_path / "o"
    _assert_refused(_infer(scan, "-o", out, "--model", scan), out, "ct.nii.gz")


def test_tampered_manifest_hash_refused(tmp_path, single_package):
    m = json.loads((single_package / "manifest.json").read_text())
    m["stages"][0]["files"]["fp32"]["sha256"] = "0" * 64
    (single_package / "manifest.json").write_text(json.dumps(m))
    out = tmp_path / "o"
    _assert_refused(_infer(_scan(tmp_path), "-o", out, "--model", single_package), out, "sha256")


def test_output_equal_to_input_via_folder_of_one(tmp_path, single_package):
    """-o naming the scan itself, given as a .nii (uncompressed) file: refused, input intact."""
    hu, _ = make_ct(shape=(8, 16, 16), kidney_slices=(2, 6))
    f = write_nifti(tmp_path / "ct.nii", hu, kits_affine())
    before = f.read_bytes()
    r = _infer(f, "-o", f, "--model", single_package)
    assert r.exit_code == 2 and "input" in r.stderr and "Traceback" not in r.output
    assert f.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["ct.nii"]


def test_many_scans_some_bad_others_written(tmp_path, single_package):
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(2):
        _scan(scans, f"good{i}.nii.gz", seed=i)
    hu = np.random.default_rng(1).integers(-1000, 1000, size=(16, 32, 32)).astype(np.int16)
    _corrupt_middle(write_nifti(tmp_path / "src.nii.gz", hu, kits_affine()), scans / "bitrot.nii.gz")
    nan = make_ct(shape=(8, 16, 16), kidney_slices=(2, 6))[0].astype(np.float32)
    nan[4, 3, 3] = np.nan
    write_nifti(scans / "nan.nii.gz", nan, kits_affine())
    (scans / "four.nii.gz").write_bytes(b"")  # empty
    out = tmp_path / "out"
    prof = tmp_path / "p.json"
    r = _infer(scans, "-o", out, "--model", single_package, "--profile", prof)
    assert r.exit_code == 2
    assert sorted(p.name for p in out.iterdir()) == ["good0_seg.nii.gz", "good0_seg.volumes.json",
                                                       "good1_seg.nii.gz", "good1_seg.volumes.json"]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("kidedge: error:")]
    assert len(errors) == 3
    assert {e.split(":")[2].strip().split("/")[-1] for e in errors} == {"bitrot.nii.gz", "nan.nii.gz", "four.nii.gz"}
    assert "3 of 5 scans failed" in r.stderr
    assert "Traceback" not in r.output
    d = json.loads(prof.read_text())
    assert len(d["scans"]) == 2 and len(d["failed"]) == 3
