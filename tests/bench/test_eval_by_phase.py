"""benchmarks/eval_by_phase.py: per-case scores grouped by each phantom's contrast phase."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("eval_by_phase", ROOT / "benchmarks" / "eval_by_phase.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_groups_by_phase_and_mode(tmp_path):
    looks = {"case_a": ("noncontrast", "physiological"), "case_b": ("noncontrast", "random"),
             "case_c": ("excretory", "physiological")}
    for case, (phase, mode) in looks.items():
        (tmp_path / case).mkdir()
        (tmp_path / case / "source.json").write_text(json.dumps({"appearance": {"phase": phase, "mode": mode}}))
    scores = {"case_a": (0.9, 0.5), "case_b": (0.7, 0.0), "case_c": (0.8, 1.0)}
    per_case = {c: {"kidney_dice": k, "tumour_dice": t} for c, (k, t) in scores.items()}
    evaluation = {"package": "p", "split": "s", "part": "test", "cases": list(scores),
                  "by_precision": {"int8": {"per_case": per_case}}}
    table = _script().group([evaluation], tmp_path)["int8"]
    assert table["noncontrast"]["cases"] == 2 and table["noncontrast"]["kidney_dice"] == pytest.approx(0.8)
    assert table["noncontrast"]["kidney_dice_min"] == pytest.approx(0.7)
    assert table["excretory"]["tumour_dice"] == pytest.approx(1.0)
    assert table["mode: physiological"]["cases"] == 2 and table["all"]["cases"] == 3
    assert table["all"]["tumour_dice"] == pytest.approx(0.5)
    with pytest.raises(SystemExit, match="source.json"):
        _script().group([{**evaluation, "by_precision": {"int8": {"per_case": {"case_x": per_case["case_a"]}}}}],
                        tmp_path)
