import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from kidedge import cli
from kidedge.environment import describe, int8_pairs_saturate, machine_label

COMMANDS = {"phantom", "train", "export", "infer", "batch", "evaluate", "bench", "demo", "info"}


def test_help_lists_every_command_of_the_contract():
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].strip().splitlines()}
    assert listed == COMMANDS


def test_info_reports_environment_as_text_and_json():
    runner = CliRunner()
    text = runner.invoke(cli.main, ["info"])
    assert text.exit_code == 0 and "onnxruntime" in text.output and "cpu:" in text.output
    assert "int8 on CPU: " in text.output
    assert "onnxruntime on CPU: " in text.output
    data = json.loads(runner.invoke(cli.main, ["info", "--json"]).output)
    assert "CPUExecutionProvider" in data["backends"]["onnxruntime"]["providers"]
    assert data["cpu"]["logical_cores"] >= 1
    calls = data["cpu"]["onnxruntime_calls"]
    assert calls["calls"] >= 1 and (calls["threads_per_call"] or 1) >= 1
    assert calls["threads_per_call"] is not None or calls["calls"] == 1


@pytest.mark.parametrize("sets, saturates", [
    (["avx2", "fma"], True),                      # Haswell .. Coffee Lake, AMD Zen 1-3
    (["avx2", "avx512f", "avx512_vnni"], False),  # Cascade Lake and later, Zen 4
    (["avx2", "avx_vnni"], False),                # Alder Lake
    (["asimd", "asimddp", "i8mm"], False),        # Arm (Jetson Orin)
    ([], False),                                  # flags unreadable
])
def test_int8_pairs_saturate_only_on_avx2_without_vnni(sets, saturates):
    assert int8_pairs_saturate({"instruction_sets": sets}) is saturates


def test_machine_label_is_folder_safe():
    label = machine_label(describe())
    assert label and all(c.isalnum() or c == "-" for c in label)


def test_int8_weight_bits_needs_int8(tmp_path):
    result = CliRunner().invoke(cli.main, ["export", str(tmp_path), "--out", str(tmp_path / "p"),
                                           "--int8-cpu-weight-bits", "7"])
    assert result.exit_code != 0 and "add --int8" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "p").exists()


def test_missing_implementation_is_a_one_line_exit_2():
    @click.command()
    @cli._one_line_errors
    def probe():
        cli._library_call("kidedge.no_such_module", "run", "issue 99")

    result = CliRunner().invoke(probe, [])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "issue 99" in result.output


def test_internal_error_is_one_line_exit_1():
    @click.command()
    @cli._one_line_errors
    def probe():
        raise RuntimeError("boom\nsecond line")

    result = CliRunner().invoke(probe, [])
    assert result.exit_code == 1
    assert result.output.strip() == "kidedge: internal error: RuntimeError: boom"


def test_usage_error_exits_2():
    result = CliRunner().invoke(cli.main, ["train", "--recipe", "x"])
    assert result.exit_code == 2


@pytest.mark.parametrize("args", [["--version"], ["info"]])
def test_console_entry_point_runs(args):
    out = subprocess.run([sys.executable, "-m", "kidedge.cli", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
