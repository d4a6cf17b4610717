"""The trainer: ``train_recipe(recipe, data, out, ...)`` behind ``kidedge train``.

One run directory holds everything export needs::

    RUN_DIR/run.json        recipe, stages (arch, kwargs, preprocessing spec, output,
                            roi, checkpoint, metrics), split, data, held-out metrics
    RUN_DIR/split.json      the patient-level train/val/test split (seeded)
    RUN_DIR/<stage>/best.pt     best weights (state_dict, weights_only loadable)
    RUN_DIR/<stage>/last.pt     last weights; resume.pt: optimizer/scheduler/epoch
    RUN_DIR/<stage>/preprocess.json  the stage's exact preprocessing spec
    RUN_DIR/metrics.csv, RUN_DIR/curves.png
    RUN_DIR/cache/          memory-mapped int16/uint8 copies of the cases

Multi-stage recipes train their stages one after another
(:class:`kidedge.train.stage_trainer.StageTrainer`). On CUDA: mixed precision
(bf16 where supported, else fp16 with a GradScaler), channels_last for 2D, cudnn
benchmark. CPU works: fp32, or ``precision="bf16"`` (bf16 autocast, channels_last for 2D;
1.3-6.5x as fast on CPUs with native bf16, 2D to 3D). Under torchrun the model is wrapped in
DistributedDataParallel and each rank trains on its share of every epoch's draws.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch

from kidedge.errors import KidedgeError
from kidedge.io.writer import write_json_atomic
from kidedge.train import distributed as ddp
from kidedge.train.checkpoint import load_resume_state, load_weights
from kidedge.train.curves import plot_curves, write_metrics_csv
from kidedge.train.data import CaseCache, discover_training_cases, load_split_file, make_split
from kidedge.train.models import build_model
from kidedge.train.optimisation import Precision, resolve_device, seed_everything
from kidedge.train.recipes import load_recipe
from kidedge.train.stage_trainer import StageTrainer
from kidedge.train.validation import evaluate_cases
from kidedge.train.warm_start import WarmStart

CLASSES = {"0": "background", "1": "kidney", "2": "tumour", "3": "cyst"}

__all__ = ["CLASSES", "StageTrainer", "train_recipe"]


def _prepare_cases(run_dir: Path, r: dict, found, data, resume: bool, cache_dir=None, sources=()):
    """The patient-level split (saved, or reused on resume) and the cached cases."""
    split_path = run_dir / "split.json"
    if resume and split_path.is_file():
        split = json.loads(split_path.read_text())
    else:
        s = r["split"]
        if s.get("file"):
            split = load_split_file(s["file"])
        else:
            split = make_split([c.case_id for c in found], s["seed"], s["train"], s["val"], s["test"])
        if ddp.is_main():
            write_json_atomic(split_path, split, default=float)
    for source in sources:  # every run weights come from: no case it trained on is held out here
        source.check_split(split, data)
    by_id = {c.case_id: c for c in found}
    missing = [cid for part in ("train", "val", "test") for cid in split[part] if cid not in by_id]
    if missing:
        raise KidedgeError(f"{split_path}: cases {missing[:3]} of the saved split are not in {data}")
    cache = CaseCache(cache_dir or run_dir / "cache")
    if ddp.is_main():  # rank 0 converts; the others then open the finished cache
        for cid in split["train"] + split["val"] + split["test"]:
            cache.get(by_id[cid])
    ddp.barrier()
    train_cases = [cache.get(by_id[c]) for c in split["train"]]
    val_cases = [cache.get(by_id[c]) for c in split["val"]]
    test_cases = [cache.get(by_id[c]) for c in split["test"]]
    return split, train_cases, val_cases, test_cases


def train_recipe(recipe, data, out, epochs=None, device="auto", resume=False, pretrained=None, overrides=(),
                 init_from=None, keep_stages=(), cache=None, precision="auto") -> int:
    """Train every stage of ``recipe`` on the labelled cases under ``data`` into ``out``.

    Args:
        recipe: recipe name (``kidedge train --list``) or path to a recipe .toml.
        data: dataset folder in any layout kidedge.io discovers.
        out: run directory (created; refused if it already holds a run, unless ``resume``).
        epochs: override every stage's epochs.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        resume: continue an interrupted run in ``out`` (finished stages are kept).
        pretrained: local ImageNet weights for the 2D encoders (off by default).
        overrides: ``key=value`` recipe overrides (see kidedge.train.recipes).
        init_from: an earlier run directory: every trained stage starts from its best
            weights with a fresh optimiser and schedule (:mod:`kidedge.train.warm_start`).
        keep_stages: with ``init_from``, stages taken over unchanged: ``NAME`` from
            ``init_from``, ``NAME=RUN`` from another finished run (stage 2 of a 2D cascade
            trains on the truth's region, not on stage 1's output, so stages fine-tuned in
            separate runs can be put together; keeping every stage only assembles them).
        cache: folder of converted cases (default ``out/cache``); runs on the same data
            may share one.
        precision: ``auto`` (mixed precision on CUDA, fp32 on the CPU), ``fp32`` or ``bf16``
            (:class:`kidedge.train.optimisation.Precision`).

    Returns 0; the run directory holds run.json, split.json, checkpoints, metrics.csv and
    curves.png.
    """
    r = load_recipe(recipe, overrides)
    run_dir = Path(out)
    warm, keeps = _warm_start(r, init_from, keep_stages, pretrained)
    if (run_dir / "run.json").exists() and not resume:
        raise KidedgeError(f"{run_dir}: already holds a training run (use --resume, or another --out)")
    if run_dir.exists() and not run_dir.is_dir():
        raise KidedgeError(f"{run_dir}: exists and is not a directory")
    dev = resolve_device(device)
    amp = Precision(dev, precision)  # a bad --precision fails here, before any case is cached
    if amp.note and ddp.is_main():
        print(f"note: {amp.note}", file=sys.stderr, flush=True)
    distributed = ddp.init(dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
    seed_everything(r["split"]["seed"])
    found = discover_training_cases(data)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        sources = [warm, *keeps.values()] if warm is not None else []
        split, train_cases, val_cases, test_cases = _prepare_cases(run_dir, r, found, data, resume, cache, sources)
    except KidedgeError:
        # a bad case (corrupt file, wrong shape) found while caching: leave no half-made run
        if created and ddp.is_main():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise

    run = {
        "kidedge_run": 1, "recipe": r["name"], "recipe_title": r["title"], "recipe_source": r["source"],
        "dimensionality": r["dimensionality"], "classes": CLASSES, "stages": [],
        "split": split, "data": str(Path(data).resolve()), "metrics": {},
        "overrides": list(overrides or ()), "device": str(dev), "precision": amp.name, "world_size": ddp.world_size(),
        "torch": torch.__version__,
    }
    if warm is not None:
        run["init_from"] = {"run": str(warm.dir), "kept_stages": list(keeps),
                            "kept_from": {name: str(k.dir) for name, k in keeps.items()}}
    previous = {}
    if resume and (run_dir / "run.json").is_file():
        old = json.loads((run_dir / "run.json").read_text())
        previous = {s["name"]: s for s in old.get("stages", []) if s.get("status") == "done"}
    rows: list[dict] = []
    entries, models = [], []
    started = time.perf_counter()
    for si, stage in enumerate(r["stages"]):
        if stage["name"] in keeps and stage["name"] not in previous:
            # rank 0 copies the files; every rank gets the entry
            previous[stage["name"]] = keeps[stage["name"]].keep(stage, stage["preprocess"].to_dict(), run_dir,
                                                                copy=ddp.is_main())
            ddp.barrier()
        if stage["name"] in previous:
            entry = previous[stage["name"]]
            model = build_model(stage["arch"], **stage["model_kwargs"]).to(dev)
            model.load_state_dict(load_weights(run_dir / entry["checkpoint"]))
            model.eval()
            if (run_dir / stage["name"] / "resume.pt").is_file():
                rows.extend(load_resume_state(run_dir / stage["name"] / "resume.pt")["history"])
        else:
            init = warm.weights(stage) if warm is not None else None
            context = warm.context_change(stage) if warm is not None else None
            trainer = StageTrainer(run_dir, r, si, train_cases, val_cases, dev, epochs, pretrained, init, context,
                                   precision)
            entry, model = trainer.run(resume, rows)
        entries.append(entry)
        models.append(model)
        run["stages"] = entries + [{"name": s["name"], "status": "pending"} for s in r["stages"][si + 1:]]
        if ddp.is_main():
            write_json_atomic(run_dir / "run.json", run, default=float)
    run["stages"] = entries
    if ddp.is_main():
        # Held-out cases through the whole cascade, as the runtime chains the stages.
        run["metrics"] = {
            "val": evaluate_cases(entries, models, r, val_cases, dev),
            "test": evaluate_cases(entries, models, r, test_cases, dev),
            "note": "whole cascade on held-out cases (stage 1 box gates stage 2), no post-processing",
        }
        run["ddp"] = {"world_size": ddp.world_size(),
                      "weights_in_sync": all(e.get("ddp", {}).get("weights_in_sync", True) for e in entries)}
        run["train_seconds"] = round(time.perf_counter() - started, 1)
        write_json_atomic(run_dir / "run.json", run, default=float)
        if rows:
            write_metrics_csv(rows, run_dir / "metrics.csv")
            plot_curves(rows, run_dir / "curves.png")
        m = run["metrics"]["val"].get("mean", {})
        print(f"run written to {run_dir}: val kidney Dice {m.get('kidney_dice', float('nan')):.3f}, "
              f"masses {m.get('masses_dice', float('nan')):.3f}, tumour {m.get('tumour_dice', float('nan')):.3f}",
              flush=True)
    ddp.barrier()
    if distributed:
        ddp.shutdown()
    return 0


def _warm_start(r: dict, init_from, keep_stages, pretrained) -> tuple[WarmStart | None, dict]:
    """The :class:`WarmStart` of ``init_from`` (None without) and, per kept stage, the run
    it is taken from, after checking the options."""
    if init_from is None:
        if keep_stages:
            raise KidedgeError("--keep-stage takes a stage from an earlier run: give --init-from RUN")
        return None, {}
    if pretrained:
        raise KidedgeError("--pretrained and --init-from both set the starting weights: give one")
    names = [s["name"] for s in r["stages"]]
    warm = WarmStart(init_from)
    keeps: dict[str, WarmStart] = {}
    for item in keep_stages:
        name, _, other = str(item).partition("=")
        if name not in names:
            raise KidedgeError(f"--keep-stage {name}: the recipe has no such stage (it has: {', '.join(names)})")
        if name in keeps:
            raise KidedgeError(f"--keep-stage {name}: given twice")
        keeps[name] = WarmStart(other, option=f"--keep-stage {name}=") if other else warm
    if set(keeps) >= set(names) and all(k is warm for k in keeps.values()):
        raise KidedgeError(f"--keep-stage names every stage of {warm.dir}: nothing would be trained "
                           "(to put stages of different runs together, give NAME=RUN)")
    for stage in r["stages"]:
        keeps.get(stage["name"], warm).weights(stage)  # every stage must fit before any training starts
    return warm, keeps
