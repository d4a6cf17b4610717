"""Fine-tuning from an earlier run: ``kidedge train --init-from RUN [--keep-stage NAME]``.

A CPU training of the built-in model takes hours per stage, and a stage that stopped
early (fewer epochs than its recipe, for time) is worth continuing rather than redoing.
Resuming cannot do that: the resumed scheduler keeps the old run's length, so a cosine
schedule would climb back up. A warm start instead begins a *new* run whose stages
start from the earlier run's best weights with a fresh optimiser and schedule (the
recipe's, or ``--set`` overrides such as a lower ``lr``); ``--keep-stage`` takes a
stage over unchanged (its weights, preprocessing and metrics), without training, from the
same run or (``--keep-stage NAME=RUN``) from another: a cascade's stages fine-tuned in two
runs at once can be put together (stage 2 trains on the truth's region, not on stage 1).

Both refuse what would make the new run's numbers dishonest or unloadable:

- a different architecture or model settings than the recipe's stage (the weights would
  not fit, or would silently mean something else). One change is allowed: more slice
  context (a 2D stage turned 2.5D, ``preprocess.context`` and ``model.in_channels = 2 *
  context + 1`` raised together). The convolutions that read the input then grow: the old
  weights become the centre slice's and the new neighbour channels start at zero, so the warm
  model's first output equals the earlier model's and training decides what the
  neighbours add (:func:`expand_input_channels`);
- a split under which a case the earlier run trained on is held out (validation or
  test) in the new run: its held-out scores would be measured on training data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kidedge.errors import KidedgeError
from kidedge.io.writer import write_json_atomic

__all__ = ["WarmStart"]


class WarmStart:
    """An earlier run directory to start from.

    Args:
        run_dir: the earlier run (its ``run.json`` must list finished stages), or a 2D model
            package (:mod:`kidedge.export.from_package`), e.g. the built-in one, to fine-tune.
        option: the command-line option that named it, for the messages.
    """

    def __init__(self, run_dir, option: str = "--init-from ") -> None:
        from kidedge.export.from_package import is_package, run_from_package

        self.dir = Path(run_dir)
        self.option = option  # how the run was named, for the messages
        if is_package(self.dir):
            # A model package (the built-in one has no run folder): its weights, hash-checked,
            # and the run its manifest records (stages, preprocessing, split) stand in.
            run, self.dir = run_from_package(self.dir)
            self.run = {**run, "stages": [{**s, "status": "done"} for s in run["stages"]]}
            self.stages = {s["name"]: s for s in self.run["stages"]}
            return
        path = self.dir / "run.json"
        if not path.is_file():
            raise KidedgeError(f"{option}{self.dir}: no run.json (not a finished kidedge training run, nor a model package)")
        try:
            self.run = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise KidedgeError(f"{option}{self.dir}: unreadable run.json ({type(exc).__name__})") from exc
        self.stages = {s["name"]: s for s in self.run.get("stages", []) if s.get("status") == "done"}

    def check_split(self, split: dict, data=None) -> None:
        """Refuse a split that holds out a case the earlier run trained on. Case ids name
        cases of a data folder: when the earlier run's folder is another than ``data`` (e.g.
        your scans against the phantoms the built-in model was trained on), the same id is
        another case, and nothing is refused."""
        earlier = self.run.get("data")
        if data is not None and isinstance(earlier, str) and Path(earlier).resolve() != Path(data).resolve():
            return
        trained = set((self.run.get("split") or {}).get("train", []))
        leaked = sorted(trained & (set(split.get("val", [])) | set(split.get("test", []))))
        if leaked:
            raise KidedgeError(
                f"{self.option}{self.dir}: {len(leaked)} case(s) it trained on are held out in this run "
                f"(e.g. {leaked[0]}): use the same split (--set split.file=...) so held-out scores stay honest")

    def _stage(self, stage: dict) -> dict:
        name = stage["name"]
        old = self.stages.get(name)
        if old is None:
            raise KidedgeError(f"{self.option}{self.dir}: no finished stage '{name}' "
                               f"(it has: {', '.join(self.stages) or 'none'})")
        if old.get("arch") != stage["arch"] or not _same_but_context(old, stage):
            raise KidedgeError(
                f"{self.option}{self.dir}: stage '{name}' is {old.get('arch')} {old.get('model_kwargs')}, "
                f"the recipe's is {stage['arch']} {stage['model_kwargs']}: the weights do not fit")
        return old

    def weights(self, stage: dict) -> Path:
        """The earlier run's best weights for the recipe's ``stage`` (checked to fit)."""
        path = self.dir / self._stage(stage)["checkpoint"]
        if not path.is_file():
            raise KidedgeError(f"{self.option}{self.dir}: {path.name} of stage '{stage['name']}' is missing")
        return path

    def context_change(self, stage: dict) -> tuple[int, int] | None:
        """(earlier, recipe's) slice context of ``stage`` where it grows (2D to 2.5D), else None."""
        c0, c1 = _contexts(self._stage(stage), stage)
        return (c0, c1) if c0 != c1 else None

    def keep(self, stage: dict, spec: dict, run_dir: Path, copy: bool = True) -> dict:
        """Copy the finished ``stage`` into ``run_dir`` unchanged; returns its run.json entry.

        ``spec`` is the recipe stage's preprocessing (``PreprocessSpec.to_dict()``): a kept
        stage must see the pixels it was trained on. ``copy=False`` (other DDP ranks) only
        builds the entry.
        """
        old = self._stage(stage)
        if not stage.get("fit_zscore") and old.get("preprocess") != spec:
            raise KidedgeError(f"--keep-stage {stage['name']}: the recipe's preprocessing {spec} differs from "
                               f"the one the stage was trained with {old.get('preprocess')}")
        src = self.weights(stage)
        if copy:
            dest = run_dir / stage["name"]
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / "best.pt")
            write_json_atomic(dest / "preprocess.json", old.get("preprocess", spec), default=float)
        entry = {**old, "checkpoint": f"{stage['name']}/best.pt", "kept_from": str(self.dir)}
        entry.pop("last_checkpoint", None)
        return entry


def _contexts(old: dict, stage: dict) -> tuple[int, int]:
    """Slice context of the earlier run's stage and of the recipe's."""
    return int(old.get("preprocess", {}).get("context", 0)), int(stage["preprocess"].context)


def _same_but_context(old: dict, stage: dict) -> bool:
    """The earlier stage's model settings equal the recipe's, but for ``in_channels`` grown
    with the slice context (2 * context + 1 channels both times, context not shrinking)."""
    before, after = dict(old.get("model_kwargs", {})), dict(stage["model_kwargs"])
    if before == after:
        return True
    c0, c1 = _contexts(old, stage)
    grown = (c1 > c0 and before.get("in_channels", 1) == 2 * c0 + 1
             and after.get("in_channels", 1) == 2 * c1 + 1)
    return grown and {**before, "in_channels": None} == {**after, "in_channels": None}


def expand_input_channels(state: dict, target: dict, old_context: int, new_context: int) -> dict:
    """``state`` (weights trained with ``old_context`` slices each side) made to fit
    ``target`` (a model's state_dict with ``new_context``).

    A tensor whose shapes differ only in its input-channel axis, by the added neighbours,
    reads the network's input: the first convolution, and in the SqueezeNet U-Net also the
    last decoder block, whose skip is the input itself concatenated after the upsampled
    features. In both the input's channels are the axis's last ones, so those old weights
    go to the centre of the new input channels, the new neighbours get zeros and the
    channels before them are copied: the output is unchanged for any input (a test checks
    this on the built-in recipe's SqueezeNet U-Net). Any other difference is refused."""
    pad = new_context - old_context
    old_in = 2 * old_context + 1
    out = {}
    for name, value in state.items():
        want = target.get(name)
        if want is None or want.shape == value.shape:
            out[name] = value
            continue
        if (value.dim() < 2 or want.dim() != value.dim() or want.shape[0] != value.shape[0]
                or want.shape[2:] != value.shape[2:] or want.shape[1] != value.shape[1] + 2 * pad
                or value.shape[1] < old_in):
            raise KidedgeError(f"{name}: {tuple(value.shape)} cannot grow to {tuple(want.shape)} "
                               f"(only the input channels may grow with the slice context)")
        features = value.shape[1] - old_in  # channels before the input's (0 for the first conv)
        grown = value.new_zeros(want.shape)
        grown[:, :features] = value[:, :features]
        grown[:, features + pad:features + pad + old_in] = value[:, features:]
        out[name] = grown
    return out
