import subprocess
import sys


def test_runtime_import_does_not_import_torch():
    code = ("import kidedge.runtime, kidedge.runtime.command, kidedge.runtime.backends.registry, "
            "kidedge.runtime.backends.torch_backend, kidedge.runtime.backends.tensorrt_backend, sys; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_cpu_inference_run_does_not_import_torch(tmp_path):
    """A whole `kidedge infer` on CPU (auto backend) never imports torch either."""
    code = f"""
import sys
sys.path.insert(0, {str(__import__('pathlib').Path(__file__).resolve().parents[2])!r})
from pathlib import Path
from tests.runtime.synthetic import make_ct, write_nifti, kits_affine, make_cascade_package
from kidedge.runtime.command import infer_command
tmp = Path({str(tmp_path)!r})
hu, _ = make_ct(shape=(8, 32, 32), kidney_slices=(2, 6))
scan = write_nifti(tmp / "s.nii.gz", hu, kits_affine())
pkg = make_cascade_package(tmp / "pkg")
assert infer_command([str(scan)], output=str(tmp / "o.nii.gz"), model=str(pkg)) == 0
assert 'torch' not in sys.modules, 'torch was imported'
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
