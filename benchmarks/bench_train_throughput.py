"""Training throughput of every kidedge model: optimiser steps on synthetic batches.

For each architecture of kidedge.train.models (2D: SqueezeNet U-Net, ResNet34 U-Net;
3D: Kidney-Net, Masses-Net with deep supervision, the multi-scale residual network) it
times full training steps (forward, the recipe family's loss, backward, Adam step) on
random input of a fixed size and reports slices/s (2D) or voxels/s (3D), plus CPU
seconds per step. Data loading and augmentation are not included: this is the model's
own cost, the ceiling of the trainer's throughput.

All configurations are measured in one process, interleaved round by round (A B C A B C
...), so ratios between them are fair on a shared, noisy machine; the median over rounds
is reported.

Sizes: ``--sizes cpu`` (default) uses inputs small enough for a shared 2-core CPU (2D
batches of 4 x 128 x 128, 3D patches of 16 x 64 x 64, a small fraction of the papers'); ``--sizes paper`` uses the recipes' own patch
sizes (2D 512 x 512 slices; 3D 16 x 256 x 256, 64 x 96 x 96, 80 x 128 x 128), meant for a
GPU.

Every model runs in four configurations: fp32 or mixed precision, each with channels_last
(channels_last_3d for 3D) off and on. Mixed precision is the trainer's own
(:class:`kidedge.train.optimisation.Precision`): on CUDA ``auto`` (bf16 autocast where
supported, else fp16 autocast + GradScaler), on the CPU ``bf16`` (``kidedge train
--precision bf16``), measured only where the CPU has native bf16.

Usage:
    python benchmarks/bench_train_throughput.py [--device cpu|cuda] [--sizes cpu|paper]
        [--rounds 3] [--threads N] [--out benchmarks/results]
Writes train_throughput.json and train_throughput.md (CPU), or
train_throughput_<gpu>.{json,md} on CUDA.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kidedge.environment import machine_label  # noqa: E402
from kidedge.train.losses import SegmentationLoss  # noqa: E402
from kidedge.train.models import build_model, count_parameters  # noqa: E402
from kidedge.train.optimisation import Precision, cpu_has_native_bf16  # noqa: E402

# arch -> (kwargs, batch, input spatial size) per size set; sizes are (H, W) or (D, H, W)
MODELS = {
    "cpu": {
        "squeezenet_unet": ({"classes": 4}, 4, (128, 128)),
        "resnet34_unet": ({"classes": 4}, 4, (128, 128)),
        "kidney_net3d": ({"classes": 2}, 1, (16, 64, 64)),
        "masses_net3d": ({"classes": 4}, 1, (16, 64, 64)),
        "msrn3d": ({"classes": 2}, 1, (16, 64, 64)),
    },
    "paper": {
        "squeezenet_unet": ({"classes": 4}, 16, (512, 512)),
        "resnet34_unet": ({"classes": 2}, 16, (512, 512)),
        "kidney_net3d": ({"classes": 2}, 2, (16, 256, 256)),
        "masses_net3d": ({"classes": 4}, 2, (64, 96, 96)),
        "msrn3d": ({"classes": 2}, 2, (80, 128, 128)),
    },
}


class Config:
    """One (model, precision, memory format) combination, ready to step."""

    def __init__(self, arch, kwargs, batch, size, device, amp: bool, channels_last: bool, seed: int = 0):
        self.arch, self.batch, self.size, self.device = arch, batch, tuple(size), device
        self.channels_last = channels_last
        torch.manual_seed(seed)
        self.model = build_model(arch, in_channels=1, **kwargs).to(device).train()
        self.params = count_parameters(self.model)
        self.fmt = None
        if channels_last:
            self.fmt = torch.channels_last if len(size) == 2 else torch.channels_last_3d
            self.model = self.model.to(memory_format=self.fmt)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        classes = kwargs["classes"]
        output = {"activation": "softmax", "labels": list(range(classes)), "regions": [[i] for i in range(classes)]}
        self.loss = SegmentationLoss("ce_dice", output).to(device)
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn((batch, 1, *size), generator=g).to(device)
        if self.fmt is not None:
            self.x = self.x.contiguous(memory_format=self.fmt)
        self.y = torch.randint(0, classes, (batch, *size), generator=g).to(device)
        mode = "fp32" if not amp else ("auto" if device.type == "cuda" else "bf16")
        self.amp = Precision(device, mode)  # the trainer's own autocast and scaler

    @property
    def precision(self) -> str:
        return self.amp.name

    def step(self) -> None:
        with self.amp.autocast():
            out = self.model(self.x)
        loss = self.loss(out, self.y)
        self.opt.zero_grad(set_to_none=True)
        scaler = self.amp.scaler
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(self.opt)
            scaler.update()
        else:
            loss.backward()
            self.opt.step()

    def timed(self, steps: int) -> tuple[float, float]:
        """(wall seconds, CPU seconds) per step over ``steps`` steps."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        sync()
        return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps

    def samples(self) -> dict:
        n_slices = self.batch * (self.size[0] if len(self.size) == 3 else 1)
        voxels = self.batch
        for s in self.size:
            voxels *= s
        return {"slices": n_slices, "voxels": voxels}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--sizes", choices=sorted(MODELS), default=None, help="cpu (default on CPU) or paper (default on CUDA)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per configuration (median reported)")
    ap.add_argument("--steps", type=int, default=1, help="steps per timed round")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)")
    ap.add_argument("--models", default="", help="comma-separated subset of the architectures")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--note", action="append", default=[], help="a line for the report (e.g. the machine's load)")
    ap.add_argument("--rewrite-report", metavar="JSON", help="re-render the Markdown of a results JSON (adding --note lines)")
    args = ap.parse_args()
    if args.rewrite_report:
        path = Path(args.rewrite_report)
        res = json.loads(path.read_text())
        res["notes"] = res.get("notes", []) + args.note
        path.write_text(json.dumps(res, indent=2) + "\n")
        path.with_suffix(".md").write_text(markdown(res))
        print(markdown(res))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_train_throughput: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = args.sizes or ("paper" if device.type == "cuda" else "cpu")
    table = MODELS[sizes]
    archs = [a for a in table if not args.models or a in args.models.split(",")]
    amps = (False, True) if device.type == "cuda" or cpu_has_native_bf16() else (False,)
    variants = [(a, c) for a in amps for c in (False, True)]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    configs = []
    for arch in archs:
        kwargs, batch, size = table[arch]
        for amp, cl in variants:
            cfg = Config(arch, kwargs, batch, size, device, amp, cl)
            cfg.step()  # warm-up: allocations, cudnn autotuning, lazy init
            if device.type == "cuda":
                torch.cuda.synchronize()
            configs.append(cfg)
            print(f"ready: {arch} {cfg.precision} channels_last={cl}", flush=True)
    times = {id(c): [] for c in configs}
    for r in range(args.rounds):
        for c in configs:
            times[id(c)].append(c.timed(args.steps))
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    rows = []
    for c in configs:
        wall = statistics.median(t[0] for t in times[id(c)])
        cpu = statistics.median(t[1] for t in times[id(c)])
        s = c.samples()
        rows.append({
            "arch": c.arch, "dimensionality": "2d" if len(c.size) == 2 else "3d", "parameters": c.params,
            "batch": c.batch, "input": list(c.size), "precision": c.precision, "channels_last": c.channels_last,
            "step_wall_s": round(wall, 4), "step_cpu_s": round(cpu, 4),
            "slices_per_s": round(s["slices"] / wall, 3), "voxels_per_s": round(s["voxels"] / wall, 1),
            "slices_per_cpu_s": round(s["slices"] / cpu, 3) if cpu > 0 else None,
            "rounds_wall_s": [round(t[0], 4) for t in times[id(c)]],
        })
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    result = {
        "benchmark": "train_throughput", "machine": machine_label(), "device": str(device), "gpu": gpu,
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "sizes": sizes, "rounds": args.rounds, "steps_per_round": args.steps,
        "command": "python benchmarks/bench_train_throughput.py " + " ".join(sys.argv[1:]),
        "what": "full training steps (forward, ce_dice loss, backward, Adam) on random input; no data loading",
        "rows": rows, "notes": list(args.note),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "train_throughput" if gpu is None else "train_throughput_" + machine_label()
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(res: dict) -> str:
    lines = [
        "# Training throughput",
        "",
        f"Machine: {res['machine']}; device {res['device']}" + (f" ({res['gpu']})" if res["gpu"] else "")
        + f"; torch {res['torch']}, {res['cpu_threads']} CPU threads. Command: `{res['command']}`.",
        "",
        f"What: {res['what']}. Median of {res['rounds']} interleaved rounds of {res['steps_per_round']} steps.",
        "",
        "| model | params | batch x input | precision | channels_last | s/step (wall) | CPU s/step | slices/s | voxels/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        inp = "x".join(str(v) for v in r["input"])
        lines.append(f"| {r['arch']} | {r['parameters'] / 1e6:.2f} M | {r['batch']} x {inp} | {r['precision']} | "
                     f"{'on' if r['channels_last'] else 'off'} | {r['step_wall_s']:.3f} | {r['step_cpu_s']:.3f} | "
                     f"{r['slices_per_s']:.3g} | {r['voxels_per_s']:,.0f} |")
    lines.append("")
    for note in res.get("notes", []):
        lines.append(f"- {note}")
    by = {(r["arch"], r["precision"], r["channels_last"]): r for r in res["rows"]}
    sq, rn = by.get(("squeezenet_unet", "fp32", False)), by.get(("resnet34_unet", "fp32", False))
    if sq and rn and sq["input"] == rn["input"] and sq["batch"] == rn["batch"]:
        lines.append(f"- SqueezeNet U-Net trains {sq['slices_per_s'] / rn['slices_per_s']:.1f}x as many slices/s as "
                     f"the ResNet34 U-Net on the same input (wall), {rn['step_cpu_s'] / sq['step_cpu_s']:.1f}x in CPU "
                     f"time, with {rn['parameters'] / sq['parameters']:.0f}x fewer parameters.")
    for r in res["rows"]:
        base = by.get((r["arch"], "fp32", False))
        if base and (r["precision"] != "fp32" or r["channels_last"]) and r["input"] == base["input"]:
            lines.append(f"- {r['arch']}, {r['precision']}, channels_last {'on' if r['channels_last'] else 'off'}: "
                         f"{base['step_wall_s'] / r['step_wall_s']:.2f}x the steps/s of fp32 without it.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
