"""``kidedge phantom OUT --training-set``: grouped split, files, resume, errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from kidedge.cli import main
from kidedge.errors import KidedgeError
from kidedge.phantom.training_set import plan_cases, write_training_set
from kidedge.train.data import load_split_file


def _fake_sources(tmp_path, n_btcv=30, n_kits=50):
    bodies = []
    for i in range(n_btcv):
        bodies.append(tmp_path / f"label{i:04d}.nii.gz")
    bodies.append(tmp_path / "amos_0013.nii.gz")
    ts = tmp_path / "totalsegmentator_s0011.nii.gz"
    (tmp_path / "totalsegmentator_s0011.labels.json").write_text("{}")
    bodies.append(ts)
    kidneys = [(f"kits/case_{i:05d}", tmp_path / f"case_{i:05d}.nii.gz") for i in range(n_kits)]
    return bodies, kidneys


def test_grouped_split_shares_no_source_between_parts(tmp_path):
    bodies, kidneys = _fake_sources(tmp_path)
    jobs, split = plan_cases(bodies, kidneys, 120, seed=4)
    used = {p: {"bodies": set(), "kidneys": set()} for p in ("train", "val", "test")}
    for j in jobs:
        used[j["part"]]["bodies"].add(j["body_name"])
        if j["kidneys_name"]:
            used[j["part"]]["kidneys"].add(j["kidneys_name"])
        assert j["case"] in split[j["part"]]
    for kind in ("bodies", "kidneys"):
        t, v, s = (used[p][kind] for p in ("train", "val", "test"))
        assert t and v and s
        assert not (t & v) and not (t & s) and not (v & s)
        for p in ("train", "val", "test"):
            assert used[p][kind] <= set(split["sources"][p][kind])
    # The one AMOS and one TotalSegmentator body (unique pelvis/bone labels) stay in training.
    assert {"amos/amos_0013", "totalsegmentator/totalsegmentator_s0011"} <= used["train"]["bodies"]
    assert len(split["val"]) == len(split["test"]) == 12
    assert 0.05 < np.mean([j["kidneys"] is None for j in jobs]) < 0.3  # own, normal kidneys
    again, split2 = plan_cases(bodies, kidneys, 120, seed=4)
    assert again == jobs and split2 == split
    other, _ = plan_cases(bodies, kidneys, 120, seed=5)
    assert other != jobs
    with pytest.raises(KidedgeError, match=">= 3 body maps"):
        plan_cases(bodies[:2], kidneys, 10, seed=0)


def test_writes_the_training_set_and_resumes(tmp_path, tiny_sources):
    bodies, kidneys = tiny_sources
    out = tmp_path / "set"
    written = write_training_set(out, bodies=[bodies], kidneys=[kidneys], cases=3, workers=1,
                                 seed=2, rows=64)
    assert [p.name for p in written] == ["case_00000", "case_00001", "case_00002"]
    split = load_split_file(out / "split.json")  # the trainer's own reader takes it
    assert sorted(split["train"] + split["val"] + split["test"]) == [p.name for p in written]
    sources = json.loads((out / "sources.json").read_text())
    for case in written:
        rec = sources[case.name]
        assert rec["part"] in ("train", "val", "test") and rec["body"].startswith("btcv/")
        assert rec["appearance"]["phase"] and rec["cpu_s"] > 0 and rec["mb"] > 0
        img = nib.load(str(case / "imaging.nii.gz"))
        seg = nib.load(str(case / "segmentation.nii.gz"))
        assert img.get_data_dtype() == np.int16 and seg.get_data_dtype() == np.uint8
        assert img.shape == seg.shape and img.shape[1:] == (64, 64)
        assert nib.aff2axcodes(img.affine) == ("I", "P", "L") and np.allclose(img.affine, seg.affine)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
        assert np.asarray(seg.dataobj).any()
    assert (out / "montage.png").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    write_training_set(out, bodies=[bodies], kidneys=[kidneys], cases=3, workers=2, seed=2,
                       rows=64, montage=False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == before  # resumed: kept
    with pytest.raises(KidedgeError, match="other settings"):
        write_training_set(out, bodies=[bodies], kidneys=[kidneys], cases=3, seed=3, rows=64)


def test_parallel_workers_give_the_same_cases(tmp_path, tiny_sources):
    bodies, kidneys = tiny_sources
    a = write_training_set(tmp_path / "a", bodies=[bodies], kidneys=[kidneys], cases=3,
                           workers=1, seed=8, rows=48, montage=False)
    b = write_training_set(tmp_path / "b", bodies=[bodies], kidneys=[kidneys], cases=3,
                           workers=2, seed=8, rows=48, montage=False)
    for x, y in zip(a, b, strict=True):
        for name in ("imaging.nii.gz", "segmentation.nii.gz"):
            assert np.array_equal(np.asarray(nib.load(str(x / name)).dataobj),
                                  np.asarray(nib.load(str(y / name)).dataobj))


def test_cli_errors_are_one_line(tmp_path, tiny_sources):
    bodies, kidneys = tiny_sources
    runner = CliRunner()
    res = runner.invoke(main, ["phantom", str(tmp_path / "x"), "--bodies", str(bodies)])
    assert res.exit_code == 2 and "need --training-set" in res.output
    res = runner.invoke(main, ["phantom", str(tmp_path / "x"), "--training-set", "--from-labels", str(kidneys)])
    assert res.exit_code == 2 and "do not go together" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(main, ["phantom", str(tmp_path / "x"), "--training-set", "--bodies", str(empty),
                               "--kidneys", str(kidneys)])
    assert res.exit_code == 2 and "no multi-organ label maps" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    res = runner.invoke(main, ["phantom", str(full), "--training-set", "--bodies", str(bodies),
                               "--kidneys", str(kidneys), "--cases", "3"])
    assert res.exit_code == 2 and "refusing to overwrite" in res.output
    assert sorted(p.name for p in full.iterdir()) == ["notes.txt"]


def test_the_trainer_takes_the_grouped_split(tmp_path, tiny_sources):
    """`kidedge train --set split.file=OUT/split.json` uses the set's split as it is."""
    pytest.importorskip("torch")
    from kidedge.train.data import discover_training_cases
    from kidedge.train.loop import _prepare_cases
    from kidedge.train.recipes import load_recipe

    bodies, kidneys = tiny_sources
    out = tmp_path / "set"
    write_training_set(out, bodies=[bodies], kidneys=[kidneys], cases=3, workers=1, seed=1,
                       rows=48, montage=False)
    recipe = load_recipe("kidedge_default", [f"split.file={out / 'split.json'}"])
    run = tmp_path / "run"
    run.mkdir()
    split, train, val, test = _prepare_cases(run, recipe, discover_training_cases(out), out, False)
    given = json.loads((out / "split.json").read_text())
    assert [c.case_id for c in train] == given["train"] and [c.case_id for c in val] == given["val"]
    assert [c.case_id for c in test] == given["test"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": ["case_00000"], "val": ["case_00000"], "test": []}))
    with pytest.raises(KidedgeError, match="more than one part"):
        _prepare_cases(run, load_recipe("kidedge_default", [f"split.file={bad}"]),
                       discover_training_cases(out), out, False)


def test_without_shared_data_the_error_says_what_to_pass(tmp_path, monkeypatch):
    from kidedge.phantom import training_set

    monkeypatch.setattr(training_set, "shared_data_dir", lambda: None)
    res = CliRunner().invoke(main, ["phantom", str(tmp_path / "x"), "--training-set"])
    assert res.exit_code == 2 and "pass --bodies DIR" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
