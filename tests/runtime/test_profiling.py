import time

import numpy as np
import pytest

from kidedge.runtime.profiling import (
    Profiler,
    integrate_energy_j,
    parse_tegrastats_line,
    tegrastats_total_mw,
)
from kidedge.runtime.report import format_summary

ORIN_NANO = ("11-23-2026 10:01:02 RAM 2448/7620MB (lfb 6x4MB) SWAP 0/3810MB (cached 0MB) "
             "CPU [2%@729,1%@729,off,off,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305] "
             "cpu@46.437C soc2@45.156C VDD_IN 5000mW/4950mW VDD_CPU_GPU_CV 600mW/580mW VDD_SOC 1200mW/1190mW")
NANO_JP4 = ("RAM 1400/3964MB (lfb 241x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
            "CPU [3%@102,2%@102,1%@102,2%@102] EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 APE 25 PLL@29C "
            "CPU@31.5C PMIC@100C GPU@31C AO@37.5C thermal@31.25C POM_5V_IN 3000/3000 POM_5V_GPU 0/0 POM_5V_CPU 123/123")
XAVIER = ("RAM 3030/31927MB (lfb 6893x4MB) CPU [1%@1190,0%@1190] EMC_FREQ 0% GR3D_FREQ 0% "
          "AUX@31C CPU@33C GPU 155/155 CPU 311/311 SOC 933/933 CV 0/0 VDDRQ 155/155 SYS5V 1606/1606")


def test_tegrastats_orin_milliwatt_format():
    rails = parse_tegrastats_line(ORIN_NANO)
    assert rails == {"VDD_IN": 5000.0, "VDD_CPU_GPU_CV": 600.0, "VDD_SOC": 1200.0}
    assert tegrastats_total_mw(rails) == 5000.0


def test_tegrastats_jetpack4_format_ignores_memory_fields():
    rails = parse_tegrastats_line(NANO_JP4)
    assert rails == {"POM_5V_IN": 3000.0, "POM_5V_GPU": 0.0, "POM_5V_CPU": 123.0}
    assert tegrastats_total_mw(rails) == 3000.0


def test_tegrastats_without_input_rail_sums_rails():
    rails = parse_tegrastats_line(XAVIER)
    assert rails["GPU"] == 155.0 and rails["SYS5V"] == 1606.0 and "RAM" not in rails
    assert tegrastats_total_mw(rails) == 155 + 311 + 933 + 0 + 155 + 1606


# The layout of a TX2 tegrastats line as NVIDIA's tool prints it (the form recorded in
# jetson_stats' tegrastats emulator: engine clocks such as "NVENC 716" without a slash,
# "MTS fg 0% bg 0%", sub-zero temperatures, rails in mW without a unit); numbers changed.
TX2 = ("RAM 3811/7844MB (lfb 2x512kB) CPU [41%@2035,9%@2034,22%@2034,48%@2035,40%@2035,37%@2035] "
       "SWAP 120/1024MB (cached 5MB) EMC_FREQ 3%@1866 GR3D_FREQ 61%@1300 APE 150 MTS fg 0% bg 0% "
       "BCPU@-44C MCPU@-44C GPU@-50.5C PLL@44C AO@46.5C Tboard@36C Tdiode@45.25C PMIC@100C "
       "thermal@45.9C VDD_IN 12870/13102 VDD_CPU 2016/2204 VDD_GPU 5712/5790 VDD_SOC 1295/1288 "
       "VDD_WIFI 19/19 NVENC 716 NVDEC 716 VDD_DDR 2480/2496")


def test_tegrastats_tx2_format_takes_the_input_rail_not_engine_clocks():
    rails = parse_tegrastats_line(TX2)
    assert rails == {"VDD_IN": 12870.0, "VDD_CPU": 2016.0, "VDD_GPU": 5712.0, "VDD_SOC": 1295.0,
                     "VDD_WIFI": 19.0, "VDD_DDR": 2480.0}
    assert tegrastats_total_mw(rails) == 12870.0  # the module input, not the sum of rails


def test_tegrastats_line_without_power():
    assert parse_tegrastats_line("RAM 1400/3964MB SWAP 0/1982MB CPU [3%@102]") == {}
    assert tegrastats_total_mw({}) is None


def test_energy_integration():
    assert integrate_energy_j([(0.0, 5.0), (1.0, 5.0), (3.0, 7.0)]) == pytest.approx(5 + 12)
    assert integrate_energy_j([(0.0, 5.0)]) is None


def test_profiler_records_stages_latency_and_memory():
    with Profiler(interval_s=0.005, gpu=False, power=False) as prof:
        with prof.stage("work"):
            block = np.ones((64, 1024, 1024), np.uint8)  # 64 MiB, touched
            block[::4096] = 2
            time.sleep(0.05)
        prof.add_batch(4, 0.04)
        prof.add_batch(2, 0.1)
        prof.count("slices", 6)
        del block
    r = prof.result(6)
    assert r["stages_s"]["work"] >= 0.05
    assert r["latency_ms"]["n"] == 6
    assert r["latency_ms"]["p50"] == pytest.approx(10.0)
    assert r["latency_ms"]["p99"] == pytest.approx(50.0, rel=0.05)
    assert r["peak_rss_mb"] >= 64 and r["max_rss_mb"] >= 64
    assert r["counters"] == {"slices": 6}
    assert r["gpu"] is None and r["energy"]["joules"] is None
    text = format_summary({"scan": "x", "shape": [6, 8, 8], "backend": "b", "profile": r})
    assert "p50 10.0 ms" in text and "peak RSS" in text


def test_nvml_path_with_a_stand_in_pynvml(monkeypatch):
    """The NVML code path, with a stand-in module (no GPU here): peak memory and energy."""
    import types

    state = {"used": 1000 * 2**20, "energy_mj": 50_000}
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: "h",
        nvmlDeviceGetName=lambda h: b"Stand-in GPU",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=state["used"]),
        nvmlDeviceGetPowerUsage=lambda h: 150_000,
        nvmlDeviceGetTotalEnergyConsumption=lambda h: state["energy_mj"],
    )
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake)
    with Profiler(interval_s=0.005, power=False) as prof:
        state["used"] = 3000 * 2**20
        time.sleep(0.05)
        state["used"] = 1200 * 2**20
        state["energy_mj"] = 62_500
    r = prof.result(1)
    assert r["gpu"]["name"] == "Stand-in GPU"
    assert r["gpu"]["peak_memory_mb"] == 3000.0 and r["gpu"]["peak_memory_above_start_mb"] == 2000.0
    assert r["energy"]["joules"] == pytest.approx(12.5) and "nvml" in r["energy"]["source"]


def test_tegrastats_path_with_a_stand_in_executable(tmp_path, monkeypatch):
    """The Jetson code path: a stand-in `tegrastats` on PATH prints Orin-style lines."""
    exe = tmp_path / "tegrastats"
    exe.write_text("#!/bin/sh\nwhile true; do echo 'RAM 1/2MB VDD_IN 4000mW/4000mW VDD_SOC 900mW/900mW'; "
                   "sleep 0.02; done\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    with Profiler(interval_s=0.01, gpu=False) as prof:
        time.sleep(0.5)
    e = prof.result(1)["energy"]
    assert e["source"].startswith("tegrastats")
    assert e["mean_power_w"] == pytest.approx(4.0)
    assert e["samples"] >= 3
    # 4 W mean module power times the run's wall time
    assert e["joules"] == pytest.approx(4.0 * prof.wall_s, rel=1e-3)
