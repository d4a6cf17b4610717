"""``kidedge batch`` end to end: on a private local Ray (started and shut down by the run),
good and bad scans, outputs as ``kidedge infer`` writes them, failures listed; then rerun on
an existing Ray cluster (a head node started here, left running by the run): finished scans
skipped, a damaged one redone. Slow (two Ray starts); skipped without Ray."""

from __future__ import annotations

import contextlib
import csv
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from kidedge.batch.pipeline import run_batch
from kidedge.runtime.command import infer_command

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "batch_summary.csv", newline="") as f:
        return {Path(r["scan"]).name: r for r in csv.DictReader(f)}


@contextlib.contextmanager
def ray_head(tmp_path, cpus=2):
    """A Ray head node of this test's own (``ray start --block``: stopping that one process,
    by its id, stops its node), reachable at the returned address."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ray_exe = Path(sys.executable).with_name("ray")
    log = open(tmp_path / "ray_head.log", "w")
    proc = subprocess.Popen([str(ray_exe), "start", "--head", f"--port={port}", f"--num-cpus={cpus}",
                             "--include-dashboard=false", "--disable-usage-stats", "--block"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(240):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            assert proc.poll() is None, (tmp_path / "ray_head.log").read_text()
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def ray_auth(monkeypatch):
    """One authentication mode for both Rays of the test and this driver: off. Ray reads
    the mode into its C++ config when first imported and enables tokens for new local
    clusters when ~/.ray/auth_token exists, so a test that set tokens up per cluster would
    depend on what ran before it; these clusters live a minute, on this machine."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


@pytest.mark.slow
def test_batch_on_local_ray_then_on_a_cluster(tmp_path, archive, package, ray_auth):
    root, truths = archive
    out = tmp_path / "out"
    assert run_batch(root, out, workers=2, model=str(package), gate=False) == 2
    assert not ray.is_initialized()  # the private Ray was shut down
    rows = _summary(out)
    assert {k: v["status"] for k, v in rows.items()} == {
        "imaging.nii.gz": "done", "patient_7.nii.gz": "done", "broken.nii.gz": "failed", "notes.nii": "failed"}
    assert rows["broken.nii.gz"]["error"] and rows["notes.nii"]["error"]
    outputs = {}
    for rel in truths:
        scan = root / rel
        row = rows[scan.name]
        assert float(row["seconds"]) > 0 and float(row["kidney_ml"]) > 0
        ref = tmp_path / "ref" / f"{scan.parent.name}.nii.gz"
        assert infer_command([str(scan)], output=str(ref), model=str(package), gate=False) == 0
        got = nib.load(row["output"])
        np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(nib.load(ref).dataobj))
        np.testing.assert_array_equal(got.affine, nib.load(ref).affine)
        outputs[scan.name] = Path(row["output"])
    kept = outputs["patient_7.nii.gz"].stat().st_mtime_ns
    # one finished output damaged after the run: it is no longer finished
    damaged = outputs["imaging.nii.gz"]
    damaged.write_bytes(damaged.read_bytes()[:100])
    with ray_head(tmp_path) as (address, head):
        assert run_batch(root, out, ray_address=address, model=str(package), gate=False) == 2
        assert not ray.is_initialized()  # this driver disconnected ...
        assert head.poll() is None  # ... and the cluster runs on, as it was
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        try:
            assert ray.cluster_resources().get("CPU") == 2
        finally:
            ray.shutdown()
    rows = _summary(out)
    assert {k: v["status"] for k, v in rows.items()} == {
        "imaging.nii.gz": "done", "patient_7.nii.gz": "skipped", "broken.nii.gz": "failed", "notes.nii": "failed"}
    assert outputs["patient_7.nii.gz"].stat().st_mtime_ns == kept  # not rewritten
    assert float(rows["patient_7.nii.gz"]["kidney_ml"]) > 0  # volumes of skipped scans still listed
    ref = tmp_path / "ref" / "case_00000.nii.gz"
    np.testing.assert_array_equal(np.asarray(nib.load(damaged).dataobj), np.asarray(nib.load(ref).dataobj))
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary files left
