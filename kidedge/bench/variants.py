"""The benchmark's variants: which ways of segmenting a scan run on this machine, and how
often each is repeated."""

from __future__ import annotations

import dataclasses
import importlib.util

from kidedge.bench.scans import BenchScan
from kidedge.runtime.backends.registry import float_localisers, has_nvidia_gpu

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
        region: for baselines on a cascade: the segmenter on the localiser's region only
            (True: kidedge's work) or on every whole slice (False: paper 001, extra work).
        extra: not kidedge's work (whole slices); reported as a separately named row,
            never in a headline ratio.
    """

    name: str
    label: str
    kind: str
    runner: str
    backend: str | None = None
    precision: str | None = None
    gate: bool | None = None
    expensive: bool = False
    region: bool | None = None
    extra: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: The variant the headline ratios are about: what ``kidedge infer`` picks on a CPU.
DEFAULT_VARIANT = "ort-int8-cpu-gated"


def plan_variants(package, quick: bool = False, monai: bool | None = None, torch: bool | None = None,
                  curve: bool = False) -> list[Variant]:
    """The variants to run for ``package`` on this machine.

    The baselines do kidedge's work (for a cascade: localiser on every slice, segmenter on
    its region). kidedge runs onnxruntime (CPU here) with gating for each ONNX precision
    the package carries (fp16 only where a GPU exists: onnxruntime's CPU provider has no
    fast fp16) and the torch backend fp32. Extra rows, clearly named and never in a
    headline ratio: the papers' way with the segmenter on whole slices (paper 001) and
    kidedge int8 without gating. The quick bench keeps the floor, both baselines and
    kidedge fp32 and int8 gated; ``curve`` (time and memory against scan length) the
    floor, both baselines and kidedge's default.
    """
    have_torch = importlib.util.find_spec("torch") is not None if torch is None else torch
    have_monai = importlib.util.find_spec("monai") is not None if monai is None else monai
    every = set.intersection(*(set(s.files) for s in package.stages))
    cascade = len(package.stages) > 1
    out = [Variant("floor", "read only: nibabel, whole volume decompressed (floor)", "floor", "floor")]
    if have_torch and "torch" in every:
        work = " (same work)" if cascade else ""
        out.append(Variant("papers", f"papers' way{work}: float volume, torch eager fp32", "baseline", "papers",
                           expensive=True, region=True))
        if have_monai:
            out.append(Variant("monai", f"MONAI SliceInferer{work} (torch fp32)", "baseline", "monai",
                               expensive=True, region=True))
        if cascade and not quick and not curve:
            out.append(Variant("papers-wholeslice", "extra: papers' way, segmenter on every whole slice (paper 001)",
                               "baseline", "papers", expensive=True, region=False, extra=True))
    # int8 needs it in every stage but a float localiser, which int8 runs in fp32 (export's default)
    float_loc = float_localisers(package)
    int8_every = set.intersection(*(set(s.files) for s in package.stages if s.name not in float_loc))
    precisions = [p for p in ("fp32", "int8-cpu", "int8-trt", "fp16")
                  if p in every or (p.startswith("int8") and cascade and float_loc and p in int8_every)]
    if "fp16" in precisions and not has_nvidia_gpu():
        precisions.remove("fp16")
    gates = (True, False) if cascade else (True,)
    gpu = has_nvidia_gpu()
    for p in precisions:
        for g in gates:
            if quick and (not g or p not in ("fp32", "int8-cpu")):
                continue
            if not g and (p != "int8-cpu" or gpu):
                # without gating the segmenter runs on every whole slice: one extra row (the
                # default precision) shows what gating saves; more would only cost time
                continue
            name = f"ort-{p}{'-gated' if g and cascade else ''}{'-nogate' if not g else ''}"
            if curve and name != DEFAULT_VARIANT and cascade:
                continue
            tag = "" if not cascade else (" gated" if g else " no gate")
            if p.startswith("int8") and p not in every:
                tag += ", localiser fp32"
            out.append(Variant(name, f"{'extra: ' if not g else ''}kidedge onnxruntime {p}{tag}", "kidedge",
                               "kidedge", "onnxruntime", p, g, expensive=not g and cascade, extra=not g))
    if have_torch and "torch" in every and not quick and not curve:
        out.append(Variant(f"torch-fp32{'-gated' if cascade else ''}", f"kidedge torch fp32{' gated' if cascade else ''}",
                           "kidedge", "kidedge", "torch", "fp32", True))
    return out


def repeats_for(scan: BenchScan, variant: Variant, repeats: int) -> int:
    """How many times to run ``variant`` on ``scan``: cheap runs are repeated (medians of a
    noisy shared machine), full-resolution runs of long scans once. The read floor and
    kidedge's gated runs keep every repeat on long scans too: the floor ratio is judged on
    the 600-slice scan, where one run of either moves by 10% from run to run."""
    if variant.expensive and scan.slices > 100:
        return 1
    if scan.slices > 400 and variant.kind not in ("floor", "kidedge"):
        return min(repeats, 2)
    return repeats


