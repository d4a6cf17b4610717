"""One stage of a recipe trained: data, model, loss, optimiser, epochs with validation,
best and last checkpoints, resume (:class:`StageTrainer`; :func:`kidedge.train.loop.
train_recipe` runs the stages of a recipe one after another)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from kidedge.errors import KidedgeError
from kidedge.io.writer import write_json_atomic
from kidedge.preprocess import fit_zscore, normalised_value
from kidedge.train import distributed as ddp
from kidedge.train.checkpoint import (
    load_resume_state,
    load_weights,
    save_resume_state,
    save_weights,
)
from kidedge.train.curves import write_metrics_csv
from kidedge.train.data import sample_hu
from kidedge.train.datasets import PatchDataset, SliceDataset, pad_collate
from kidedge.train.losses import SegmentationLoss
from kidedge.train.models import build_model, count_parameters
from kidedge.train.optimisation import Precision, make_optimizer, make_scheduler
from kidedge.train.roi import bounding_box, label_box
from kidedge.train.sampling import allowed_slices, draw_epoch
from kidedge.train.validation import (
    gt_box,
    predict_case_2d,
    predict_case_3d,
    score_stage,
    stage_dice,
)
from kidedge.train.warm_start import expand_input_channels

PRETRAINABLE = ("squeezenet_unet", "resnet34_unet")


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
                 device: torch.device, epochs_override: int | None, pretrained: str | None,
                 init_weights: Path | None = None, init_context: tuple[int, int] | None = None,
                 precision: str = "auto"):
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
        self.init_weights = init_weights  # warm start (kidedge.train.warm_start)
        self.init_context = init_context  # (its slice context, the recipe's) where 2D grows to 2.5D
        self.precision = Precision(device, precision)
        # channels_last for 2D on CUDA, and on the CPU with bf16 autocast, where oneDNN's bf16
        # convolutions want it (fp32 CPU runs keep the layout the shipped recipes trained with)
        self.channels_last = self.dim == "2d" and (device.type == "cuda" or self.precision.dtype is not None)

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
        if self.init_weights is not None:
            state = load_weights(self.init_weights, map_location=self.device)
            if self.init_context is not None:
                state = expand_input_channels(state, model.state_dict(), *self.init_context)
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:  # shapes or names differ
                raise KidedgeError(f"{self.init_weights}: does not fit stage '{self.stage['name']}' "
                                   f"({str(exc).splitlines()[0]})") from exc
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    # ------------------------------------------------------------------ run
    def run(self, resume: bool, rows: list[dict]) -> tuple[dict, torch.nn.Module]:
        stage, t = self.stage, self.t
        self.dir.mkdir(parents=True, exist_ok=True)
        spec = self.fit_spec()
        if ddp.is_main():
            write_json_atomic(self.dir / "preprocess.json", spec.to_dict(), default=float)
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
        opt = make_optimizer(model.parameters(), t)
        sched, sched_when = make_scheduler(opt, t, self.epochs, steps)
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
                               stage["sampling"]["kidney_fraction"], stage["sampling"]["tumour_fraction"], roi,
                               stage["sampling"]["outside_fraction"])
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
                       "regions": [list(r) for r in stage["output"]["regions"]],
                       **({"through_plane_sigma_mm": float(stage["output"]["through_plane_sigma_mm"])}
                          if stage["output"].get("through_plane_sigma_mm") else {})},
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
        if self.init_weights is not None:
            entry["init_from"] = str(self.init_weights)
            if self.init_context is not None:
                entry["init_context_grown"] = list(self.init_context)
        if roi is not None:
            entry["roi"] = {"source_stage": roi["source_stage"], "labels": list(roi["labels"]),
                            "margin_mm": float(roi["margin_mm"])}
            if roi.get("context", "floor") != "floor":  # packages without it mean "floor"
                entry["roi"]["context"] = roi["context"]
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
        # An epoch's validation may use the first val_max_cases cases only (0: all): on a CPU
        # whole-case prediction of a large validation split can cost more than the epoch.
        # The run's final held-out scores (run.json metrics) always use every case.
        limit = int(self.t.get("val_max_cases") or 0)
        for c in (self.val_cases[:limit] if limit > 0 else self.val_cases):
            box = gt_box(c, roi) if roi is not None else None
            if roi is not None and box is None:
                continue  # no kidney: nothing for a segment stage to do
            if self.dim == "2d":
                pred, ls, ln = predict_case_2d(model, c, spec, stage["output"], self.device, bs, box, loss_fn,
                                               self.precision.autocast(), self.channels_last,
                                               fill_grid=roi is not None and roi.get("context") == "scan")
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
