"""Bad scans through the CLI's error wrapper: exit 2, one line on stderr, nothing written.

A throwaway click command (read a scan, write a segmentation, as ``kidedge infer`` does)
is wrapped with the CLI's own ``_one_line_errors``, so these tests do not depend on a
model package; and a fresh interpreter shows kidedge.io never imports torch.
"""

from __future__ import annotations

import gzip
import subprocess
import sys

import click
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from kidedge.cli import _one_line_errors
from kidedge.io import load_scan, save_segmentation
from tests.io.conftest import kits19_affine, random_volume, ras_affine, write_nifti


@click.command()
@click.argument("scan")
@click.option("-o", "output")
@_one_line_errors
def segment(scan, output):
    s = load_scan(scan)
    save_segmentation((s.array > 0).astype(np.uint8), s, output)


def _bad_inputs(tmp):
    good = write_nifti(tmp / "good.nii.gz", random_volume((8, 10, 12)), ras_affine())
    data = good.read_bytes()
    (tmp / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    (tmp / "text.nii.gz").write_bytes(gzip.compress(b"plain text " * 100))
    (tmp / "notes.txt").write_text("hello")
    (tmp / "empty.nii").write_bytes(b"")
    (tmp / "emptydir").mkdir()
    write_nifti(tmp / "flat.nii.gz", random_volume((10, 12)), np.eye(4))
    write_nifti(tmp / "series.nii.gz", random_volume((6, 6, 4, 2)), ras_affine())
    nan = random_volume((6, 6, 4)).astype(np.float32)
    nan[1, 2, 3] = np.nan
    write_nifti(tmp / "nan.nii.gz", nan, kits19_affine())
    img = nib.Nifti1Image(random_volume((6, 6, 4)), None)
    img.header["pixdim"][1:4] = [1.0, -1.0, 1.0]
    nib.save(img, str(tmp / "negative.nii.gz"))
    return {
        "missing": (tmp / "missing.nii.gz", "no such file"),
        "truncated gzip": (tmp / "cut.nii.gz", "truncated"),
        "gzip, not NIfTI": (tmp / "text.nii.gz", "NIfTI"),
        "not NIfTI or DICOM": (tmp / "notes.txt", "not a NIfTI file"),
        "empty file": (tmp / "empty.nii", "empty file"),
        "empty folder": (tmp / "emptydir", "empty folder"),
        "2D": (tmp / "flat.nii.gz", "2D array"),
        "4D": (tmp / "series.nii.gz", "4D array"),
        "NaN": (tmp / "nan.nii.gz", "NaN"),
        "negative spacing": (tmp / "negative.nii.gz", "negative voxel spacing"),
    }


def test_each_bad_input_exits_2_with_one_line(tmp_path):
    for what, (path, problem) in _bad_inputs(tmp_path).items():
        out = tmp_path / "out" / f"{path.name}.seg.nii.gz"
        result = CliRunner().invoke(segment, [str(path), "-o", str(out)])
        assert result.exit_code == 2, (what, result.output)
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("kidedge: error: "), (what, result.stderr)
        assert str(path) in lines[0] and problem in lines[0], (what, lines[0])
        assert not out.exists(), what
    assert not (tmp_path / "out").exists()


def test_output_equal_to_input_exits_2_and_keeps_the_input(tmp_path):
    src = write_nifti(tmp_path / "scan.nii.gz", random_volume((8, 10, 12)), ras_affine())
    before = src.read_bytes()
    result = CliRunner().invoke(segment, [str(src), "-o", str(src)])
    assert result.exit_code == 2 and "output path is the input" in result.stderr
    assert src.read_bytes() == before


def test_good_input_exits_0(tmp_path):
    src = write_nifti(tmp_path / "good.nii.gz", random_volume((8, 10, 12)), ras_affine())
    result = CliRunner().invoke(segment, [str(src), "-o", str(tmp_path / "seg.nii.gz")])
    assert result.exit_code == 0, result.output
    assert nib.load(tmp_path / "seg.nii.gz").shape == (8, 10, 12)


@pytest.mark.parametrize("module", ["kidedge.io"])
def test_io_never_imports_torch(tmp_path, module):
    src = write_nifti(tmp_path / "s.nii.gz", random_volume((8, 10, 12)), ras_affine())
    code = (
        f"import sys, {module}\n"
        "from kidedge.io import load_scan, SlabReader, save_segmentation, discover_cases\n"
        f"s = load_scan({str(src)!r})\n"
        "[x for x in SlabReader(s, 4, 1)]\n"
        f"save_segmentation(s.array > 0, s, {str(tmp_path / 'o.nii.gz')!r})\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
