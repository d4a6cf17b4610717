"""The benchmark's variants: which ways of segmenting a scan run on this machine, and how
often each is repeated."""

from __future__ import annotations

import dataclasses
import importlib.util

from kidedge.bench.scans import BenchScan
from kidedge.runtime.backends.registry import has_nvidia_gpu

#: A single run longer than this is stopped and reported as a failure.
CHILD_TIMEOUT_S = 3600.0


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of segmenting a scan.

    Args:
        name: identifier (file names, JSON keys).
        label: what the report calls it.
        kind: ``floor`` (read only), ``baseline`` (papers / MONAI) or ``kidedge``.
        runner: ``floor``, ``papers``, ``monai`` or ``kidedge`` (the child's runner).
        backend, precision, gate: for kidedge variants.
        expensive: runs every slice at full resolution (repeated less on long scans).
    """

    name: str
    label: str
    kind: str
    runner: str
    backend: str | None = None
    precision: str | None = None
    gate: bool | None = None
    expensive: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def plan_variants(package, quick: bool = False, monai: bool | None = None, torch: bool | None = None) -> list[Variant]:
    """The variants to run for ``package`` on this machine.

    kidedge runs onnxruntime (CPU here) for each ONNX precision the package carries (fp16
    only where a GPU exists: onnxruntime's CPU provider has no fast fp16), gated and not
    gated for a cascade; the torch backend fp32 (gated). The quick bench keeps the floor,
    both baselines and kidedge fp32 and int8 with gating.
    """
    have_torch = importlib.util.find_spec("torch") is not None if torch is None else torch
    have_monai = importlib.util.find_spec("monai") is not None if monai is None else monai
    every = set.intersection(*(set(s.files) for s in package.stages))
    cascade = len(package.stages) > 1
    out = [Variant("floor", "read + decompress only (floor)", "floor", "floor")]
    if have_torch and "torch" in every:
        out.append(Variant("papers", "papers' way (torch eager fp32, whole volume)", "baseline", "papers",
                           expensive=True))
        if have_monai:
            out.append(Variant("monai", "MONAI SliceInferer (torch fp32)", "baseline", "monai", expensive=True))
    precisions = [p for p in ("fp32", "int8-cpu", "int8-trt", "fp16") if p in every]
    if "fp16" in precisions and not has_nvidia_gpu():
        precisions.remove("fp16")
    gates = (True, False) if cascade else (True,)
    gpu = has_nvidia_gpu()
    for p in precisions:
        for g in gates:
            if quick and (not g or p not in ("fp32", "int8-cpu")):
                continue
            if p == "int8-trt" and not g and not gpu:
                # the TensorRT-flavoured QDQ model on onnxruntime's CPU provider: run it gated
                # for its latency and Dice, but not also over every slice at full resolution
                # (the slowest kind of run; int8-cpu no-gate already shows int8 without gating)
                continue
            tag = "" if not cascade else (" gated" if g else " no gate")
            out.append(Variant(f"ort-{p}{'-gated' if g and cascade else ''}{'-nogate' if not g else ''}",
                               f"kidedge onnxruntime {p}{tag}", "kidedge", "kidedge", "onnxruntime", p, g,
                               expensive=not g and cascade))
    if have_torch and "torch" in every and not quick:
        out.append(Variant(f"torch-fp32{'-gated' if cascade else ''}", f"kidedge torch fp32{' gated' if cascade else ''}",
                           "kidedge", "kidedge", "torch", "fp32", True))
    return out


def repeats_for(scan: BenchScan, variant: Variant, repeats: int) -> int:
    """How many times to run ``variant`` on ``scan``: cheap runs are repeated (medians of a
    noisy shared machine), full-resolution runs of long scans once."""
    if variant.expensive and scan.slices > 100:
        return 1
    if scan.slices > 400:
        return min(repeats, 2)
    return repeats


