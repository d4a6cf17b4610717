"""Measurements in fresh child processes: the floor variant, failures, memory probes; and
the bench package importing without torch."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np

from kidedge.bench.measure import measure


def _nifti(path, shape=(6, 32, 32)):
    arr = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    nib.save(nib.Nifti1Image(arr, np.diag([-1.0, -1.0, -3.0, 1.0])), str(path))
    return path


def test_floor_runs_in_a_child_and_reports_time_and_memory(tmp_path):
    image = _nifti(tmp_path / "ct.nii.gz")
    r = measure({"kind": "floor", "image": str(image), "out": str(tmp_path / "x.nii.gz")}, timeout_s=300)
    assert r["ok"] is True, r
    assert r["dtype"] == "int16" and r["voxels"] == 6 * 32 * 32
    assert 0 < r["stages"]["read"] <= r["scan_s"] < r["wall_s"]
    assert 10 < r["peak_rss_mb"] < 2000 and r["scan_peak_rss_mb"] <= r["peak_rss_mb"]
    assert r["scan_cpu_s"] >= 0


def test_a_failing_child_gives_one_line_not_an_exception(tmp_path):
    r = measure({"kind": "floor", "image": str(tmp_path / "missing.nii.gz"), "out": "x"}, timeout_s=300)
    assert r["ok"] is False and "\n" not in r["error"] and "missing.nii.gz" in r["error"]
    r = measure({"kind": "nonsense", "image": "x", "out": "y"}, timeout_s=300)
    assert r["ok"] is False and "nonsense" in r["error"]


def test_memory_probes_see_an_allocation():
    # In a fresh child: the test process's own high-water mark is already raised by earlier
    # tests, so a 60 MB block need not move it there.
    code = ("import numpy as np\n"
            "from kidedge.bench.measure import current_rss_mb, peak_rss_mb\n"
            "before = peak_rss_mb()\n"
            "block = np.ones(60_000_000 // 8)\n"
            "cur = current_rss_mb()\n"
            "assert cur is None or cur > 50, cur\n"
            "assert peak_rss_mb() >= before + 40, (before, peak_rss_mb())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_bench_imports_without_torch():
    code = ("import sys\n"
            "import kidedge.bench, kidedge.bench.baselines, kidedge.bench.measure\n"
            "import kidedge.bench.report, kidedge.bench.scans, kidedge.bench.kidedge_variant\n"
            "import kidedge.bench.untrained_package, kidedge.bench.run, kidedge.bench.package_eval\n"
            "bad = [m for m in ('torch', 'monai', 'torchvision') if m in sys.modules]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_bench_command_bad_model_is_one_line_exit_2(tmp_path):
    from click.testing import CliRunner

    from kidedge.cli import main

    r = CliRunner().invoke(main, ["bench", "--quick", "--model", str(tmp_path / "no-such-package"),
                                  "--out", str(tmp_path / "out")])
    assert r.exit_code == 2
    assert "no-such-package" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
