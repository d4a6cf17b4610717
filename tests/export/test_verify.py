"""kidedge export --verify: hashes and parity; tampered packages are refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kidedge.errors import KidedgeError
from kidedge.export.verify import verify_package
from kidedge.package import ModelPackage, write_manifest


@pytest.fixture
def package_copy(full_package, tmp_path):
    dst = tmp_path / "pkg"
    shutil.copytree(full_package, dst)
    return dst


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "kidedge.cli", *args], capture_output=True, text=True, timeout=300)


def test_verify_ok(full_package):
    assert verify_package(full_package, quiet=True) == 0


def test_tampered_model_is_refused(package_copy):
    f = package_copy / "seg/int8-cpu.onnx"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(KidedgeError, match="seg/int8-cpu does not match its sha256"):
        verify_package(package_copy, quiet=True)
    with pytest.raises(KidedgeError, match="sha256 does not match"):
        ModelPackage.load(package_copy).file_path("seg", "int8-cpu")
    r = _cli("export", "--verify", str(package_copy))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not match its sha256" in lines[0] and "Traceback" not in r.stderr


def test_missing_file_is_refused(package_copy):
    (package_copy / "seg/fp16.onnx").unlink()
    with pytest.raises(KidedgeError, match="seg/fp16 is missing"):
        verify_package(package_copy, quiet=True)


def test_parity_regression_is_caught_even_with_matching_hashes(package_copy):
    # Someone re-hashes a package whose reference logits no longer match the model.
    ref = package_copy / "seg/reference.npz"
    with np.load(ref) as z:
        x, logits = z["input"], z["logits"]
    np.savez_compressed(ref, input=x, logits=logits + 0.01)
    manifest = json.loads((package_copy / "manifest.json").read_text())
    write_manifest(package_copy, manifest)
    with pytest.raises(KidedgeError, match="differ from the stored reference by 0.01"):
        verify_package(package_copy, quiet=True)


def test_cli_verify_ok_and_bad_manifest(package_copy):
    r = _cli("export", "--verify", str(package_copy))
    assert r.returncode == 0, r.stderr
    assert "fp32 parity" in r.stdout
    (package_copy / "manifest.json").write_text(json.dumps({**json.loads((package_copy / "manifest.json").read_text()), "format_version": 2}))
    r = _cli("export", "--verify", str(package_copy))
    assert r.returncode == 2 and "unknown format_version 2" in r.stderr
