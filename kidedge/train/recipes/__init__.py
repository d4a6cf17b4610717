"""Training recipes: one TOML file per paper recipe, parsed with ``tomllib`` and validated.

A recipe names its source (paper file and section) and carries every hyperparameter:
model and kwargs, optimiser, learning rate and schedule, batch size, epochs, loss,
preprocessing spec (HU window, normalisation), patch size, sampling, augmentation, early
stopping and the split seed. Values a paper does not state are marked ``kidedge choice``
in the file's comments and ``notes``.

Layout of a recipe (see the files for full examples)::

    name, title, source, dimensionality ("2d"|"3d"), notes
    [split]                seed, train, val, test (patient-level fractions)
    [[stages]]             name, role ("localise"|"segment"), arch, source
      [stages.model]       constructor kwargs of kidedge.train.models.build_model(arch)
      [stages.preprocess]  PreprocessSpec fields, plus fit_zscore (fit mean/std on train)
      [stages.output]      activation, labels (label of each channel), regions (the GT
                           labels each channel is trained on), through_plane_sigma_mm
                           (2D softmax: the runtime averages probabilities over slices)
      [stages.roi]         segment stage of a cascade: source_stage, labels, margin_mm, jitter_mm,
                           context ("floor" or "scan": what it sees outside its box)
      [stages.train]       optimizer, lr, schedule, batch_size, epochs, loss, ...
      [stages.sampling]    patch, stride, kidney_fraction, tumour_fraction, outside_fraction,
                           samples_per_epoch
      [stages.augment]     rotate_deg, flip_lr, flip_ud, scale, noise_std, ...

``--set key=value`` overrides: ``section.key`` applies to every stage (e.g.
``train.batch_size=8``), ``<stage>.section.key`` to one stage, ``split.seed=3`` to the
split (``split.file=DATA/split.json`` takes a given split, e.g. the grouped one of
``kidedge phantom --training-set``); values are TOML literals (``8``, ``1e-3``,
``[128, 128]``, ``"cosine"``).
"""

from __future__ import annotations

import copy
import sys
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (the [train] extra pulls it in)
    import tomli as tomllib

from kidedge.errors import KidedgeError
from kidedge.preprocess import PreprocessSpec

RECIPE_DIR = Path(__file__).resolve().parent

_NUM = (int, float)
# section -> key -> accepted python types (after TOML parsing); "source"/"notes" are free text
SCHEMA: dict[str, dict[str, tuple]] = {
    "train": {
        "optimizer": (str,), "lr": _NUM, "weight_decay": _NUM, "momentum": _NUM, "betas": (list,),
        "nesterov": (bool,), "schedule": (str,), "plateau_patience": (int,), "plateau_factor": _NUM,
        "min_lr": _NUM, "warmup_epochs": (int,), "batch_size": (int,), "epochs": (int,),
        "loss": (str,), "dice_weight": _NUM, "class_weights": (list,), "deep_supervision_weights": (list,),
        "select_best": (str,), "early_stopping_patience": (int,), "grad_clip": _NUM,
        "val_batch_size": (int,), "val_max_cases": (int,), "num_workers": (int,),
    },
    "sampling": {
        "patch": (list,), "stride": (list,), "kidney_fraction": _NUM, "tumour_fraction": _NUM,
        "outside_fraction": _NUM,
        "samples_per_epoch": (int,),
    },
    "augment": {
        "rotate_deg": _NUM, "flip_lr": (bool,), "flip_ud": (bool,), "flip_z": (bool,), "scale": (list,),
        "noise_std": _NUM, "intensity_scale": _NUM, "intensity_shift": _NUM, "gamma": (list,),
        "blur_sigma": (list,), "probability": _NUM,
    },
    "output": {"activation": (str,), "labels": (list,), "regions": (list,), "through_plane_sigma_mm": _NUM},
    "roi": {"source_stage": (str,), "labels": (list,), "margin_mm": _NUM, "jitter_mm": _NUM, "context": (str,)},
    "split": {"seed": (int,), "train": _NUM, "val": _NUM, "test": _NUM, "file": (str,)},
}
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "plateau", "cosine", "onecycle")
LOSSES = ("ce", "ce_dice", "dice", "bce", "dice_bce", "dice_wce")
SELECT_BEST = ("val_loss", "val_dice")
ROLES = ("localise", "segment")
#: What a cascade segmenter sees around its box: "floor", the HU window's bottom (the
#: box edge is then visible to it), or "scan", the scan itself (its box grown to fill the
#: network's padded input with real pixels: kidedge.preprocess.grid_filling_span).
ROI_CONTEXTS = ("floor", "scan")
ACTIVATIONS = ("softmax", "sigmoid")
FREE_TEXT = ("source", "notes")

TRAIN_DEFAULTS = {
    "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9, "betas": [0.9, 0.999],
    "nesterov": False, "schedule": "none", "plateau_patience": 3, "plateau_factor": 0.1,
    "min_lr": 0.0, "warmup_epochs": 0, "batch_size": 8, "epochs": 10, "loss": "ce_dice",
    "dice_weight": 0.5, "class_weights": None, "deep_supervision_weights": None,
    "select_best": "val_dice", "early_stopping_patience": 0, "grad_clip": 0.0,
    "val_batch_size": 0, "val_max_cases": 0, "num_workers": 0,
}
SAMPLING_DEFAULTS = {"patch": None, "stride": None, "kidney_fraction": 0.5, "tumour_fraction": 0.2,
                     "outside_fraction": 0.0,
                     "samples_per_epoch": 0}
AUGMENT_DEFAULTS = {"rotate_deg": 0.0, "flip_lr": False, "flip_ud": False, "flip_z": False,
                    "scale": None, "noise_std": 0.0, "intensity_scale": 0.0, "intensity_shift": 0.0,
                    "gamma": None, "blur_sigma": None, "probability": 1.0}


def recipe_names() -> list[str]:
    """Names of the built-in recipes."""
    files = resources.files("kidedge.train.recipes")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def _recipe_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.is_file():
        return p
    q = RECIPE_DIR / f"{name_or_path}.toml"
    if q.is_file():
        return q
    raise KidedgeError(f"unknown recipe '{name_or_path}' (known: {', '.join(recipe_names())}; or a path to a .toml)")


def _check(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise KidedgeError(f"recipe {where}: {msg}")


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string


def apply_overrides(raw: dict, overrides) -> dict:
    """Apply ``key=value`` overrides (see module docstring) to a parsed recipe dict."""
    raw = copy.deepcopy(raw)
    stage_names = [s.get("name") for s in raw.get("stages", [])]
    for item in overrides or ():
        if "=" not in item:
            raise KidedgeError(f"--set '{item}': expected KEY=VALUE")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        value = _parse_value(text.strip())
        if parts[0] == "stages" and len(parts) > 1:
            parts = parts[1:]
        if parts[0] in stage_names and len(parts) >= 2:
            targets = [raw["stages"][stage_names.index(parts[0])]]
            parts = parts[1:]
        elif parts[0] in ("train", "sampling", "augment", "model", "preprocess", "output", "roi") and len(parts) == 2:
            targets = [s for s in raw["stages"] if parts[0] != "roi" or "roi" in s]
        elif len(parts) <= 2 and (parts[0] in raw or parts[0] in ("split", "name")):
            targets = [raw]
        else:
            raise KidedgeError(f"--set '{item}': unknown key (use section.key, <stage>.section.key or split.key)")
        for t in targets:
            node = t
            for p in parts[:-1]:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise KidedgeError(f"--set '{item}': '{p}' is not a section")
            node[parts[-1]] = value
    return raw


def _validate_section(d: dict, section: str, where: str) -> None:
    schema = SCHEMA[section]
    for k, v in d.items():
        if k in FREE_TEXT:
            continue
        _check(k in schema, where, f"unknown key '{section}.{k}'")
        if v is None:
            continue
        ok = isinstance(v, schema[k]) and not (isinstance(v, bool) and bool not in schema[k])
        _check(ok, where, f"'{section}.{k}' must be {'/'.join(t.__name__ for t in schema[k])}, got {v!r}")


def _validate_stage(s: dict, i: int, names: list[str], dim: str) -> dict:
    where = f"stage {i} ('{s.get('name', '?')}')"
    for k in ("name", "role", "arch"):
        _check(isinstance(s.get(k), str) and s[k], where, f"needs a '{k}' string")
    _check(s["role"] in ROLES, where, f"role must be one of {ROLES}")
    from kidedge.train.models import REGISTRY  # no torch import: the registry is plain data

    _check(s["arch"] in REGISTRY, where, f"unknown arch '{s['arch']}' (known: {', '.join(sorted(REGISTRY))})")
    _check(REGISTRY[s["arch"]][2] == dim, where, f"arch '{s['arch']}' is {REGISTRY[s['arch']][2]}, recipe is {dim}")
    known = {"name", "role", "arch", "source", "notes", "model", "preprocess", "output", "roi",
             "train", "sampling", "augment"}
    extra = set(s) - known
    _check(not extra, where, f"unknown keys {sorted(extra)}")
    model = dict(s.get("model", {}))
    _check("classes" in model, where, "model.classes is required")
    out = dict(s.get("output", {}))
    _validate_section(out, "output", where)
    _check(out.get("activation") in ACTIVATIONS, where, f"output.activation must be one of {ACTIVATIONS}")
    labels, regions = out.get("labels"), out.get("regions")
    _check(isinstance(labels, list) and len(labels) == model["classes"], where,
           "output.labels needs one label per model class")
    if regions is None:
        regions = [[lab] for lab in labels]
    _check(len(regions) == len(labels) and all(isinstance(r, list) for r in regions), where,
           "output.regions needs one list of GT labels per channel")
    out["regions"] = regions
    sigma = out.get("through_plane_sigma_mm", 0.0)
    _check(sigma >= 0 and (not sigma or (dim == "2d" and out["activation"] == "softmax")), where,
           "output.through_plane_sigma_mm must be >= 0, and only a 2D softmax stage can have one")
    pre = dict(s.get("preprocess", {}))
    fit_z = bool(pre.pop("fit_zscore", False))
    pre.pop("source", None)
    try:
        spec = PreprocessSpec.from_dict(pre)
    except (ValueError, TypeError) as exc:
        raise KidedgeError(f"recipe {where}: preprocess: {exc}") from exc
    _check(model.get("in_channels", 1) == spec.channels, where,
           f"model.in_channels ({model.get('in_channels', 1)}) != preprocess channels ({spec.channels})")
    roi = s.get("roi")
    if roi is not None:
        _validate_section(roi, "roi", where)
        _check(s["role"] == "segment", where, "only a segment stage has an roi")
        _check(roi.get("source_stage") in names[:i], where, "roi.source_stage must name an earlier stage")
        roi = {"labels": [1, 2, 3], "margin_mm": 20.0, "jitter_mm": 0.0, "context": "floor", **roi}
        _check(roi["context"] in ROI_CONTEXTS, where, f"roi.context must be one of {ROI_CONTEXTS}")
        _check(roi["context"] == "floor" or dim == "2d", where,
               "roi.context = 'scan' is for 2D cascades (the 3D runtime slides windows over its boxes)")
    train = {**TRAIN_DEFAULTS, **s.get("train", {})}
    _validate_section(s.get("train", {}), "train", where)
    _check(train["optimizer"] in OPTIMIZERS, where, f"train.optimizer must be one of {OPTIMIZERS}")
    _check(train["schedule"] in SCHEDULES, where, f"train.schedule must be one of {SCHEDULES}")
    _check(train["loss"] in LOSSES, where, f"train.loss must be one of {LOSSES}")
    _check(train["select_best"] in SELECT_BEST, where, f"train.select_best must be one of {SELECT_BEST}")
    _check(train["lr"] > 0 and train["batch_size"] >= 1 and train["epochs"] >= 1, where,
           "train.lr, batch_size and epochs must be positive")
    _check((train["loss"] in ("bce", "dice_bce")) == (out["activation"] == "sigmoid"), where,
           "sigmoid output goes with a bce loss, softmax with ce/dice losses")
    sampling = {**SAMPLING_DEFAULTS, **s.get("sampling", {})}
    _validate_section(s.get("sampling", {}), "sampling", where)
    nd = 2 if dim == "2d" else 3
    for key in ("patch", "stride"):
        v = sampling[key]
        _check(v is None or (len(v) == nd and all(isinstance(x, int) and x > 0 for x in v)), where,
               f"sampling.{key} must be {nd} positive integers")
    if dim == "3d":
        _check(sampling["patch"] is not None, where, "3d recipes need sampling.patch = [slices, rows, cols]")
    _check(0 <= sampling["kidney_fraction"] + sampling["tumour_fraction"] + sampling["outside_fraction"] <= 1,
           where, "kidney_fraction + tumour_fraction + outside_fraction must be in [0, 1]")
    _check(sampling["outside_fraction"] == 0 or roi is not None, where,
           "sampling.outside_fraction is for a segment stage with an roi (it draws outside the roi)")
    augment = {**AUGMENT_DEFAULTS, **s.get("augment", {})}
    _validate_section(s.get("augment", {}), "augment", where)
    return {
        "name": s["name"], "role": s["role"], "arch": s["arch"], "source": s.get("source", ""),
        "notes": s.get("notes", ""), "model_kwargs": model, "preprocess": spec, "fit_zscore": fit_z,
        "output": out, "roi": roi, "train": train, "sampling": sampling, "augment": augment,
    }


def load_recipe(name_or_path: str, overrides=()) -> dict:
    """Parse, override and validate a recipe; returns a plain dict with ``stages`` of
    validated stage dicts (``preprocess`` as a :class:`PreprocessSpec`)."""
    path = _recipe_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise KidedgeError(f"{path}: not valid TOML: {exc}") from exc
    raw = apply_overrides(raw, overrides)
    where = f"'{raw.get('name', path.stem)}'"
    _check(isinstance(raw.get("name"), str), where, "needs a 'name'")
    _check(isinstance(raw.get("source"), str) and raw["source"], where, "needs a 'source' (paper file and section)")
    dim = raw.get("dimensionality")
    _check(dim in ("2d", "3d"), where, "dimensionality must be '2d' or '3d'")
    stages = raw.get("stages")
    _check(isinstance(stages, list) and stages, where, "needs at least one [[stages]]")
    names = [s.get("name") for s in stages]
    _check(len(set(names)) == len(names), where, "stage names must be unique")
    split = {"seed": 0, "train": 0.8, "val": 0.1, "test": 0.1, **raw.get("split", {})}
    _validate_section(raw.get("split", {}), "split", where)
    _check(abs(split["train"] + split["val"] + split["test"] - 1.0) < 1e-6 and split["val"] > 0, where,
           "split fractions must sum to 1 with val > 0")
    return {
        "name": raw["name"], "title": raw.get("title", ""), "source": raw["source"],
        "notes": raw.get("notes", ""), "dimensionality": dim, "split": split, "path": str(path),
        "stages": [_validate_stage(s, i, names, dim) for i, s in enumerate(stages)],
    }


def print_recipe_list() -> int:
    """Print every built-in recipe with its title and source (``kidedge train --list``)."""
    import click

    for name in recipe_names():
        r = load_recipe(name)
        stages = " -> ".join(f"{s['name']}:{s['arch']}" for s in r["stages"])
        click.echo(f"{name}  [{r['dimensionality']}]  {r['title']}")
        click.echo(f"    stages: {stages}")
        click.echo(f"    source: {r['source']}")
    return 0
