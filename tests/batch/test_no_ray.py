"""Without Ray, ``kidedge batch`` says how to install it; the runtime never imports Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kidedge.batch.pipeline import account, run_batch
from kidedge.batch.plan import plan_items
from kidedge.errors import KidedgeError


def test_missing_ray_is_one_line_with_the_install_command(tmp_path, monkeypatch, archive):
    root, _ = archive
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(KidedgeError, match=r"pip install 'kidedge\[cluster\]'") as info:
        run_batch(root, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_runtime_and_batch_imports_do_not_import_ray():
    code = ("import sys, kidedge.runtime, kidedge.runtime.command, kidedge.batch, kidedge.batch.plan; "
            "bad = [m for m in ('ray', 'kidedge.batch.pipeline') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_scans_that_never_came_back_are_listed_as_failed(tmp_path, archive):
    root, truths = archive
    items = plan_items([root / rel for rel in truths], root, tmp_path / "out")
    got = {items[0].scan: {"scan": items[0].scan, "status": "done"}}
    lines = account(items, got)
    assert [line["status"] for line in lines] == ["done", "failed"]
    assert "worker died" in lines[1]["error"]


def test_cli_without_ray_exits_2_with_one_line(tmp_path, monkeypatch, archive):
    from click.testing import CliRunner

    from kidedge.cli import main

    root, _ = archive
    monkeypatch.setitem(sys.modules, "ray", None)
    r = CliRunner().invoke(main, ["batch", str(root), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == ["kidedge: error: kidedge batch needs Ray: pip install "
                                             "'kidedge[cluster]' (missing ray)"]
