"""The layering of docs/architecture.md, enforced: the lean layers never pull in the heavy
ones, and no module grows past about 400 lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kidedge"
#: What importing the runtime or io must never import.
FORBIDDEN = ("torch", "kidedge.train", "kidedge.export", "kidedge.bench")
MAX_LINES = 400


def _modules(package: str) -> list[str]:
    """Every module of ``kidedge.<package>`` (the package and its submodules), by file."""
    root = PACKAGE / package
    names = []
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _forbidden_after_importing(modules: list[str]) -> list[str]:
    """The :data:`FORBIDDEN` modules present after importing ``modules`` in a fresh
    interpreter."""
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in {FORBIDDEN!r}))\n"
        "print(' '.join(bad))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


@pytest.mark.parametrize("layer", ["runtime", "io"])
def test_lean_layers_never_import_torch_train_export_or_bench(layer):
    modules = _modules(layer)
    assert len(modules) > 3
    bad = _forbidden_after_importing(modules)
    assert bad == [], f"importing kidedge.{layer} imported {bad}"


def test_the_check_catches_a_forbidden_import():
    pytest.importorskip("torch")
    bad = _forbidden_after_importing(["kidedge.runtime", "kidedge.train.loop"])
    assert "torch" in bad and "kidedge.train" in bad and "kidedge.train.loop" in bad


def test_no_module_is_over_400_lines():
    too_long = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = f.relative_to(ROOT).as_posix()
        n = len(f.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            too_long[rel] = n
    assert not too_long, f"modules over {MAX_LINES} lines (split them by what they do): {too_long}"


def test_no_module_named_utils_or_helpers():
    bad = [f.relative_to(ROOT).as_posix() for f in PACKAGE.rglob("*.py") if f.stem in ("utils", "helpers", "util", "misc")]
    assert not bad, bad
