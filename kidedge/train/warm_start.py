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
  not fit, or would silently mean something else);
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
        run_dir: the earlier run (its ``run.json`` must list finished stages).
        option: the command-line option that named it, for the messages.
    """

    def __init__(self, run_dir, option: str = "--init-from ") -> None:
        self.dir = Path(run_dir)
        self.option = option  # how the run was named, for the messages
        path = self.dir / "run.json"
        if not path.is_file():
            raise KidedgeError(f"{option}{self.dir}: no run.json (not a finished kidedge training run)")
        try:
            self.run = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise KidedgeError(f"{option}{self.dir}: unreadable run.json ({type(exc).__name__})") from exc
        self.stages = {s["name"]: s for s in self.run.get("stages", []) if s.get("status") == "done"}

    def check_split(self, split: dict) -> None:
        """Refuse a split that holds out a case the earlier run trained on."""
        trained = set(self.run.get("split", {}).get("train", []))
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
        if old.get("arch") != stage["arch"] or dict(old.get("model_kwargs", {})) != dict(stage["model_kwargs"]):
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
