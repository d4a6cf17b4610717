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

Multi-stage recipes train their stages one after another. On CUDA: mixed precision
(bf16 where supported, else fp16 with a GradScaler), channels_last for 2D, cudnn
benchmark. CPU works (fp32). Under torchrun the model is wrapped in
DistributedDataParallel and each rank trains on its share of every epoch's draws.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from kidedge.errors import KidedgeError
from kidedge.preprocess import fit_zscore, normalised_value
from kidedge.train import distributed as ddp
from kidedge.train.checkpoint import (
    load_resume_state,
    load_weights,
    save_resume_state,
    save_weights,
)
from kidedge.train.curves import plot_curves, write_metrics_csv
from kidedge.train.data import (
    CaseCache,
    discover_training_cases,
    load_split_file,
    make_split,
    sample_hu,
)
from kidedge.train.datasets import PatchDataset, SliceDataset, pad_collate
from kidedge.train.losses import SegmentationLoss
from kidedge.train.models import build_model, count_parameters
from kidedge.train.recipes import load_recipe
from kidedge.train.roi import bounding_box, label_box
from kidedge.train.sampling import allowed_slices, draw_epoch
from kidedge.train.validation import (
    gt_box,
    predict_case_2d,
    predict_case_3d,
    score_stage,
    stage_dice,
)

CLASSES = {"0": "background", "1": "kidney", "2": "tumour", "3": "cyst"}
PRETRAINABLE = ("squeezenet_unet", "resnet34_unet")


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    d = (device or "auto").lower()
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise KidedgeError(f"--device {device}: CUDA is not available on this machine")
        _, _, local = ddp.env_world()
        if d == "cuda":
            d = f"cuda:{local}" if int(os.environ.get("WORLD_SIZE", 1)) > 1 else "cuda"
    elif d != "cpu":
        raise KidedgeError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    return torch.device(d)


class Precision:
    """Autocast and gradient scaling for the device: bf16 autocast on CUDA GPUs that
    support it, fp16 + GradScaler on older ones, plain fp32 on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.dtype = None
        self.scaler = None
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                self.dtype = torch.bfloat16
            else:
                self.dtype = torch.float16
                self.scaler = torch.amp.GradScaler("cuda")

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16-autocast", torch.float16: "fp16-autocast+gradscaler"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.dtype)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def _make_optimizer(params, t: dict):
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"],
                               nesterov=bool(t["nesterov"]))
    cls = torch.optim.AdamW if t["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=t["lr"], betas=tuple(t["betas"]), weight_decay=t["weight_decay"])


def _make_scheduler(opt, t: dict, epochs: int, steps_per_epoch: int):
    """(scheduler, when): when is "epoch", "step" or "val" (plateau on validation loss)."""
    if t["schedule"] == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=t["plateau_factor"], patience=t["plateau_patience"], min_lr=t["min_lr"]), "val"
    if t["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=t["min_lr"]), "epoch"
    if t["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=t["lr"], total_steps=max(1, epochs * steps_per_epoch)), "step"
    return None, None


def _default_samples(cases, stage, patch, dim: str) -> int:
    """One pass over the data: every allowed slice (2D), or every stride window (3D)."""
    if dim == "2d":
        return int(sum(np.subtract(*allowed_slices(c, stage["roi"])[::-1]) for c in cases))
    stride = stage["sampling"]["stride"] or patch
    total = 0
    for c in cases:
        z0, z1 = allowed_slices(c, stage["roi"])
        dims = (z1 - z0, c.hu.shape[1], c.hu.shape[2])
        total += int(np.prod([max(1, math.ceil((d - p) / s) + 1) for d, p, s in zip(dims, patch, stride, strict=True)]))
    return total


class StageTrainer:
    """Trains one stage of a recipe (see :func:`train_recipe`)."""

    def __init__(self, run_dir: Path, recipe: dict, stage_index: int, train_cases, val_cases,
                 device: torch.device, epochs_override: int | None, pretrained: str | None):
        self.run_dir, self.recipe, self.si = run_dir, recipe, stage_index
        self.stage = recipe["stages"][stage_index]
        self.dim = recipe["dimensionality"]
        self.train_cases, self.val_cases = train_cases, val_cases
        self.device = device
        self.dir = run_dir / self.stage["name"]
        self.t = self.stage["train"]
        self.epochs = int(epochs_override or self.t["epochs"])
        self.seed = int(recipe["split"]["seed"])
        self.pretrained = pretrained
        self.precision = Precision(device)
        self.channels_last = device.type == "cuda" and self.dim == "2d"

    # ------------------------------------------------------------------ setup
    def fit_spec(self):
        spec = self.stage["preprocess"]
        if self.stage["fit_zscore"]:
            # Paper 001 section 4.1: normalised "using the training dataset's mean and
            # standard deviation" (after clipping to the window).
            if ddp.is_main():
                mean, std = fit_zscore(sample_hu(self.train_cases, self.seed), spec.hu_window)
            else:
                mean, std = None, None
            mean, std = ddp.broadcast_object((mean, std))
            spec = spec.replace(normalisation="zscore", mean=float(mean), std=float(std))
        return spec

    def build(self):
        kwargs = dict(self.stage["model_kwargs"])
        if self.pretrained and self.stage["arch"] in PRETRAINABLE:
            kwargs["pretrained"] = self.pretrained
        torch.manual_seed(self.seed * 100 + self.si)
        model = build_model(self.stage["arch"], **kwargs).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    # ------------------------------------------------------------------ run
    def run(self, resume: bool, rows: list[dict]) -> tuple[dict, torch.nn.Module]:
        stage, t = self.stage, self.t
        self.dir.mkdir(parents=True, exist_ok=True)
        spec = self.fit_spec()
        if ddp.is_main():
            _write_json(self.dir / "preprocess.json", spec.to_dict())
        model = self.build()
        n_params = count_parameters(model)
        patch = tuple(stage["sampling"]["patch"]) if stage["sampling"]["patch"] else None
        roi = stage["roi"]
        roi_boxes = core_boxes = None
        if roi is not None:
            roi_boxes, core_boxes = [], []
            for c in self.train_cases:
                lab = np.asarray(c.labels)
                core = bounding_box(np.isin(lab, roi["labels"]))
                core_boxes.append(core)
                roi_boxes.append(None if core is None else label_box(lab, roi["labels"], c.spacing, roi["margin_mm"]))
        samples = int(stage["sampling"]["samples_per_epoch"]) or _default_samples(self.train_cases, stage, patch, self.dim)
        batch = int(t["batch_size"])
        world, rank = ddp.world_size(), ddp.rank()
        steps = max(1, samples // (batch * world))
        wrapped = model
        if ddp.active():
            wrapped = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        opt = _make_optimizer(model.parameters(), t)
        sched, sched_when = _make_scheduler(opt, t, self.epochs, steps)
        loss_fn = SegmentationLoss(t["loss"], stage["output"], t["dice_weight"], t["class_weights"],
                                   t["deep_supervision_weights"]).to(self.device)
        pad_value = normalised_value(spec.hu_window[0], spec)
        from kidedge.train.augment import BatchAugmenter

        gen = torch.Generator().manual_seed(self.seed * 1000 + self.si * 10 + rank)
        augmenter = BatchAugmenter(stage["augment"], pad_value, spec.normalisation == "range", gen)

        start_epoch, history = 0, []
        best, best_epoch, stale = None, -1, 0
        if resume and (self.dir / "resume.pt").is_file() and (self.dir / "last.pt").is_file():
            model.load_state_dict(load_weights(self.dir / "last.pt"))
            st = load_resume_state(self.dir / "resume.pt")
            opt.load_state_dict(st["optimizer"])
            if sched is not None and st.get("scheduler") is not None:
                sched.load_state_dict(st["scheduler"])
            if self.precision.scaler is not None and st.get("scaler") is not None:
                self.precision.scaler.load_state_dict(st["scaler"])
            start_epoch = int(st["epoch"]) + 1
            history = list(st["history"])
            best, best_epoch, stale = st["best"], int(st["best_epoch"]), int(st["stale_epochs"])
        rows.extend(history)

        minimise = t["select_best"] == "val_loss"
        stop = False
        for epoch in range(start_epoch, self.epochs):
            if stop:
                break
            t0 = time.perf_counter()
            # augmentation stream seeded per epoch: a resumed run repeats an uninterrupted one
            gen.manual_seed(self.seed * 1000 + self.si * 10 + rank + 7919 * epoch)
            rng = np.random.default_rng([self.seed, self.si, epoch])
            draws = draw_epoch(self.train_cases, steps * batch * world, rng,
                               stage["sampling"]["kidney_fraction"], stage["sampling"]["tumour_fraction"], roi)
            draws = draws[rank::world]
            ds_cls = SliceDataset if self.dim == "2d" else PatchDataset
            ds = ds_cls(self.train_cases, draws, spec, patch, roi, roi_boxes, core_boxes)
            loader = torch.utils.data.DataLoader(
                ds, batch_size=batch, shuffle=False, num_workers=int(t["num_workers"]), drop_last=True,
                collate_fn=pad_collate(pad_value), pin_memory=self.device.type == "cuda",
                persistent_workers=False)
            train_loss = self._train_epoch(wrapped, loader, opt, sched if sched_when == "step" else None,
                                           loss_fn, augmenter, epoch)
            ddp.broadcast_buffers(model)
            if ddp.is_main():
                val = self.validate(model, spec, loss_fn)
            else:
                val = None
            val = ddp.broadcast_object(val)
            lr = opt.param_groups[0]["lr"]
            if sched_when == "val":
                sched.step(val["val_loss"])
            elif sched_when == "epoch":
                sched.step()
            score = val["val_loss"] if minimise else val["val_dice"]
            improved = best is None or (score < best if minimise else score > best)
            if improved:
                best, best_epoch, stale = score, epoch, 0
            else:
                stale += 1
            row = {"stage": stage["name"], "epoch": epoch, "lr": lr, "train_loss": train_loss, **val,
                   "epoch_seconds": time.perf_counter() - t0}
            history.append(row)
            rows.append(row)
            if ddp.is_main():
                if improved:
                    save_weights(model, self.dir / "best.pt")
                save_weights(model, self.dir / "last.pt")
                save_resume_state(self.dir / "resume.pt", epoch=epoch, optimizer=opt, scheduler=sched,
                                  scaler=self.precision.scaler, history=history, best=best,
                                  best_epoch=best_epoch, stale_epochs=stale)
                write_metrics_csv(rows, self.run_dir / "metrics.csv")
                print(f"[{stage['name']}] epoch {epoch + 1}/{self.epochs}  train_loss {train_loss:.4f}  "
                      f"val_loss {val['val_loss']:.4f}  val_dice {val['val_dice']:.4f}"
                      f"{'  *best*' if improved else ''}  ({row['epoch_seconds']:.0f} s)", flush=True)
            patience = int(t["early_stopping_patience"])
            if patience and stale >= patience:
                stop = True
            if t["schedule"] == "plateau" and t["min_lr"] > 0 and opt.param_groups[0]["lr"] <= t["min_lr"] and stale > 0:
                stop = True  # paper 002: stop once the learning rate is below min_lr without progress
        ddp.barrier()
        in_sync, digests = ddp.weights_in_sync(model)
        if not in_sync:
            raise RuntimeError(f"DDP ranks disagree on the weights of stage {stage['name']}: {digests}")
        model.load_state_dict(load_weights(self.dir / "best.pt"))
        model.eval()
        best_row = next((r for r in history if r["epoch"] == best_epoch), history[-1] if history else {})
        entry = {
            "name": stage["name"], "role": stage["role"], "arch": stage["arch"],
            "model_kwargs": dict(stage["model_kwargs"]),
            "preprocess": spec.to_dict(),
            "output": {"activation": stage["output"]["activation"], "labels": list(stage["output"]["labels"]),
                       "regions": [list(r) for r in stage["output"]["regions"]]},
            "checkpoint": f"{stage['name']}/best.pt",
            "last_checkpoint": f"{stage['name']}/last.pt",
            "metrics": {"best_epoch": best_epoch, "epochs_run": len(history),
                        "select_best": t["select_best"],
                        **{k: v for k, v in best_row.items() if k.startswith("val_")}},
            "parameters": n_params,
            "source": stage["source"],
            "train": {**t, "epochs": self.epochs, "samples_per_epoch": samples,
                      "precision": self.precision.name, "channels_last": self.channels_last},
            "sampling": stage["sampling"], "augment": stage["augment"],
            "ddp": {"world_size": world, "weights_in_sync": in_sync},
            "status": "done",
        }
        if roi is not None:
            entry["roi"] = {"source_stage": roi["source_stage"], "labels": list(roi["labels"]),
                            "margin_mm": float(roi["margin_mm"])}
        return entry, model

    def _train_epoch(self, model, loader, opt, step_sched, loss_fn, augmenter, epoch) -> float:
        from tqdm import tqdm

        model.train()
        total, n = 0.0, 0
        scaler = self.precision.scaler
        clip = float(self.t["grad_clip"] or 0.0)
        bar = tqdm(loader, desc=f"{self.stage['name']} {epoch + 1}/{self.epochs}", leave=False,
                   disable=(not ddp.is_main()) or None, dynamic_ncols=True)
        for x, y in bar:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            x, y = augmenter(x, y)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.precision.autocast():
                out = model(x)
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if clip:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
            if step_sched is not None:
                step_sched.step()
            total += float(loss.detach())
            n += 1
            bar.set_postfix(loss=f"{total / n:.4f}")
        if n == 0:
            raise KidedgeError(f"stage '{self.stage['name']}': no training batch (batch_size larger than the epoch?)")
        return total / n

    def validate(self, model, spec, loss_fn) -> dict:
        """Validation loss and scores of this stage on the whole validation cases (the
        segment stage of a cascade on the ground-truth ROI)."""
        model.eval()
        stage = self.stage
        roi = stage["roi"]
        patch = stage["sampling"]["patch"]
        bs = int(self.t["val_batch_size"] or self.t["batch_size"])
        losses, per_case = [], []
        for c in self.val_cases:
            box = gt_box(c, roi) if roi is not None else None
            if roi is not None and box is None:
                continue  # no kidney: nothing for a segment stage to do
            if self.dim == "2d":
                pred, ls, ln = predict_case_2d(model, c, spec, stage["output"], self.device, bs, box, loss_fn,
                                               self.precision.autocast(), self.channels_last)
            else:
                pred, ls, ln = predict_case_3d(model, c, spec, stage["output"], self.device, patch, box, loss_fn,
                                               self.precision.autocast())
            if ln:
                losses.append(ls / ln)
            per_case.append(score_stage(pred, np.asarray(c.labels), c.spacing, stage["output"], stage["role"]))
        model.train()
        out = {"val_loss": float(np.mean(losses)) if losses else float("nan")}
        if per_case:
            keys = per_case[0].keys()
            mean = {k: float(np.mean([p[k] for p in per_case])) for k in keys}
            out["val_dice"] = stage_dice(mean)
            for k in ("kidney_dice", "masses_dice", "tumour_dice"):
                if k in mean:
                    out[f"val_{k}"] = mean[k]
        else:
            out["val_dice"] = float("nan")
        return out


def predict_cascade(entries, models, recipe, case, device) -> np.ndarray:
    """Run the trained stages on a case as the runtime would: a localiser's box (its
    ROI labels, grown by margin_mm) gates the segment stage; a single-stage recipe
    segments the whole case."""
    dim = recipe["dimensionality"]
    preds = {}
    final = None
    for st, e, model in zip(recipe["stages"], entries, models, strict=True):
        spec = type(recipe["stages"][0]["preprocess"]).from_dict(e["preprocess"])
        box = None
        if st["roi"] is not None:
            src = preds[st["roi"]["source_stage"]]
            box = label_box(src, st["roi"]["labels"], case.spacing, st["roi"]["margin_mm"])
            if box is None:
                final = np.zeros(case.hu.shape, np.uint8)
                preds[st["name"]] = final
                continue
        if dim == "2d":
            pred, _, _ = predict_case_2d(model, case, spec, e["output"], device, 8, box)
        else:
            pred, _, _ = predict_case_3d(model, case, spec, e["output"], device, st["sampling"]["patch"], box)
        preds[st["name"]] = pred
        final = pred
    return final


def evaluate_cases(entries, models, recipe, cases, device) -> dict:
    """Mean KiTS scores of the whole cascade over ``cases`` (and per case)."""
    from kidedge.metrics import kits_scores

    per_case = {}
    for c in cases:
        pred = predict_cascade(entries, models, recipe, c, device)
        per_case[c.case_id] = kits_scores(pred, np.asarray(c.labels), c.spacing)
    if not per_case:
        return {"n_cases": 0}
    keys = next(iter(per_case.values())).keys()
    return {"n_cases": len(per_case),
            "mean": {k: float(np.mean([s[k] for s in per_case.values()])) for k in keys},
            "per_case": per_case}


def _prepare_cases(run_dir: Path, r: dict, found, data, resume: bool):
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
            _write_json(split_path, split)
    by_id = {c.case_id: c for c in found}
    missing = [cid for part in ("train", "val", "test") for cid in split[part] if cid not in by_id]
    if missing:
        raise KidedgeError(f"{split_path}: cases {missing[:3]} of the saved split are not in {data}")
    cache = CaseCache(run_dir / "cache")
    if ddp.is_main():  # rank 0 converts; the others then open the finished cache
        for cid in split["train"] + split["val"] + split["test"]:
            cache.get(by_id[cid])
    ddp.barrier()
    train_cases = [cache.get(by_id[c]) for c in split["train"]]
    val_cases = [cache.get(by_id[c]) for c in split["val"]]
    test_cases = [cache.get(by_id[c]) for c in split["test"]]
    return split, train_cases, val_cases, test_cases


def train_recipe(recipe, data, out, epochs=None, device="auto", resume=False, pretrained=None, overrides=()) -> int:
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

    Returns 0; the run directory holds run.json, split.json, checkpoints, metrics.csv and
    curves.png.
    """
    r = load_recipe(recipe, overrides)
    run_dir = Path(out)
    if (run_dir / "run.json").exists() and not resume:
        raise KidedgeError(f"{run_dir}: already holds a training run (use --resume, or another --out)")
    if run_dir.exists() and not run_dir.is_dir():
        raise KidedgeError(f"{run_dir}: exists and is not a directory")
    dev = resolve_device(device)
    distributed = ddp.init(dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
    seed_everything(r["split"]["seed"])
    found = discover_training_cases(data)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        split, train_cases, val_cases, test_cases = _prepare_cases(run_dir, r, found, data, resume)
    except KidedgeError:
        # a bad case (corrupt file, wrong shape) found while caching: leave no half-made run
        if created and ddp.is_main():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise

    run = {
        "kidedge_run": 1, "recipe": r["name"], "recipe_title": r["title"], "recipe_source": r["source"],
        "dimensionality": r["dimensionality"], "classes": CLASSES, "stages": [],
        "split": split, "data": str(Path(data).resolve()), "metrics": {},
        "overrides": list(overrides or ()), "device": str(dev), "world_size": ddp.world_size(),
        "torch": torch.__version__,
    }
    previous = {}
    if resume and (run_dir / "run.json").is_file():
        old = json.loads((run_dir / "run.json").read_text())
        previous = {s["name"]: s for s in old.get("stages", []) if s.get("status") == "done"}
    rows: list[dict] = []
    entries, models = [], []
    started = time.perf_counter()
    for si, stage in enumerate(r["stages"]):
        if stage["name"] in previous:
            entry = previous[stage["name"]]
            model = build_model(stage["arch"], **stage["model_kwargs"]).to(dev)
            model.load_state_dict(load_weights(run_dir / entry["checkpoint"]))
            model.eval()
            if (run_dir / stage["name"] / "resume.pt").is_file():
                rows.extend(load_resume_state(run_dir / stage["name"] / "resume.pt")["history"])
        else:
            trainer = StageTrainer(run_dir, r, si, train_cases, val_cases, dev, epochs, pretrained)
            entry, model = trainer.run(resume, rows)
        entries.append(entry)
        models.append(model)
        run["stages"] = entries + [{"name": s["name"], "status": "pending"} for s in r["stages"][si + 1:]]
        if ddp.is_main():
            _write_json(run_dir / "run.json", run)
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
        _write_json(run_dir / "run.json", run)
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
