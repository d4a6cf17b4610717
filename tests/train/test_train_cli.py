"""``kidedge train`` from the command line: --list, and bad recipes / bad data / bad
devices end with one line on stderr, exit 2, no traceback and no half-made run folder."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from kidedge import cli
from kidedge.train.recipes import recipe_names


def _one_line_error(result, match: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and match in lines[0], result.output
    assert "Traceback" not in result.output


def test_list_shows_every_recipe_and_its_source():
    result = CliRunner().invoke(cli.main, ["train", "--list"])
    assert result.exit_code == 0, result.output
    for name in recipe_names():
        assert f"{name}  [" in result.output
    assert result.output.count("source: ") == len(recipe_names())
    assert "Kidney and kidney tumor segmentation using a two-stage cascade framework (KiTS21)" in result.output
    assert "shared/papers" not in result.output  # cited by title, never by a path of this machine


def test_unknown_recipe_as_a_real_process(tmp_path, phantom_data):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "kidedge.cli", "train", "--recipe", "resnet99", "--data",
                           str(phantom_data), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown recipe 'resnet99'" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.parametrize("args,match", [
    (["--set", "train.lr=fast"], "'train.lr' must be"),
    (["--set", "nonsense=1"], "unknown key"),
    (["--set", "sampling.patch=[64]"], "sampling.patch"),
    (["--device", "tpu"], "expected auto, cpu, cuda"),
    (["--device", "cuda:0"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"], "--device"),
])
def test_bad_options_are_one_line_errors(tmp_path, phantom_data, args, match):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli.main, ["train", "--recipe", "squeezenet_unet_kits19", "--data", str(phantom_data),
                                           "--out", str(out), *args])
    _one_line_error(result, match)
    assert not out.exists()


def test_bad_recipe_file(tmp_path, phantom_data):
    bad = tmp_path / "mine.toml"
    bad.write_text('name = "mine"\nsource = "me"\ndimensionality = "2d"\n[[stages]]\nname = "a"\n'
                   'role = "segment"\narch = "squeezenet_unet"\n[stages.model]\nclasses = 2\n'
                   '[stages.output]\nactivation = "softmax"\nlabels = [0, 1]\n[stages.train]\nloss = "bce"\n')
    result = CliRunner().invoke(cli.main, ["train", "--recipe", str(bad), "--data", str(phantom_data),
                                           "--out", str(tmp_path / "run")])
    _one_line_error(result, "sigmoid output goes with a bce loss")


def test_bad_data(tmp_path, phantom_data):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli.main, ["train", "--recipe", "squeezenet_unet_kits19", "--data", str(empty),
                                           "--out", str(tmp_path / "run")])
    _one_line_error(result, "no cases found")
    # a corrupt image among good cases: found while caching, the new run folder is removed
    data = tmp_path / "data"
    for name in ("case_00000", "case_00001", "case_00002"):
        shutil.copytree(phantom_data / name, data / name)
    img = data / "case_00001" / "imaging.nii.gz"
    img.write_bytes(img.read_bytes()[:300])
    out = tmp_path / "run2"
    result = CliRunner().invoke(cli.main, ["train", "--recipe", "squeezenet_unet_kits19", "--data", str(data),
                                           "--out", str(out), "--device", "cpu"])
    _one_line_error(result, "case_00001")
    assert not out.exists()
