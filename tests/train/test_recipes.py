"""Every built-in recipe parses, names its source and builds its models; bad recipes are
one-line errors."""

from __future__ import annotations

import pytest

from kidedge.errors import KidedgeError
from kidedge.train.models import REGISTRY, build_model
from kidedge.train.recipes import load_recipe, recipe_names

#: recipe -> the title of the paper it cites (papers are cited by title and section)
PAPER_RECIPES = {
    "squeezenet_unet_kits19": "A Novel Deep-Learning Based Segmentation Of Kidney Tumor (KiTS19)",
    "resnet34_unet_kits19": "A Novel Deep-Learning Based Segmentation Of Kidney Tumor (KiTS19)",
    "cascade2d_kits21": "Kidney Tumor Segmentation (KiTS21)",
    "msrn3d_kits19": "Automatic segmentation of kidney and kidney tumor based on 3D CNNs (KiTS19)",
    "cascade3d_kits21": "Kidney and kidney tumor segmentation using a two-stage cascade framework (KiTS21)",
}


def test_every_paper_recipe_is_built_in():
    assert set(PAPER_RECIPES) | {"kidedge_default"} == set(recipe_names())


@pytest.mark.parametrize("name", sorted(PAPER_RECIPES))
def test_recipe_parses_names_its_paper_and_builds_its_models(name):
    r = load_recipe(name)
    assert r["name"] == name and PAPER_RECIPES[name] in r["source"] and "section" in r["source"]
    assert r["split"] == {"seed": 0, "train": 0.8, "val": 0.1, "test": 0.1}
    for st in r["stages"]:
        assert REGISTRY[st["arch"]][2] == r["dimensionality"]
        kwargs = dict(st["model_kwargs"])
        if r["dimensionality"] == "3d":
            kwargs["base"] = 2  # the recipe's own architecture, narrow: building is what is tested
        model = build_model(st["arch"], **kwargs)
        assert sum(p.numel() for p in model.parameters()) > 0
        assert len(st["output"]["labels"]) == st["model_kwargs"]["classes"]


def test_paper_001_hyperparameters():
    r = load_recipe("cascade2d_kits21")
    kidney, tumour = r["stages"]
    assert kidney["preprocess"].hu_window == (0.0, 200.0) and kidney["fit_zscore"]
    for st in (kidney, tumour):
        t = st["train"]
        assert (st["arch"], t["optimizer"], t["lr"], t["batch_size"], t["loss"], t["select_best"]) == (
            "resnet34_unet", "adam", 1e-3, 128, "bce", "val_loss")
        assert st["output"]["activation"] == "sigmoid"
    assert tumour["roi"]["source_stage"] == "kidney"


def test_paper_003_hyperparameters():
    kidney, masses = load_recipe("cascade3d_kits21")["stages"]
    assert kidney["sampling"]["patch"] == [16, 256, 256] and kidney["sampling"]["stride"] == [8, 128, 128]
    assert masses["sampling"]["patch"] == [64, 96, 96] and masses["sampling"]["stride"] == [32, 48, 48]
    assert kidney["train"]["loss"] == "dice" and masses["train"]["loss"] == "dice_wce"
    assert masses["train"]["dice_weight"] == 0.5 and masses["model_kwargs"]["deep_supervision"]
    for st in (kidney, masses):
        assert st["preprocess"].hu_window == (-100.0, 400.0) and st["train"]["lr"] == 1e-4
        assert st["train"]["batch_size"] == 2 and st["train"]["epochs"] == 50
    assert masses["output"]["labels"] == [0, 1, 2, 3]


def test_paper_002_hyperparameters():
    seg = load_recipe("msrn3d_kits19")["stages"][-1]
    t = seg["train"]
    assert seg["sampling"]["patch"] == [80, 128, 128] and seg["preprocess"].spacing_mm == 1.0
    assert (t["optimizer"], t["lr"], t["schedule"], t["plateau_patience"], t["plateau_factor"], t["min_lr"]) == (
        "sgd", 1e-2, "plateau", 3, 0.1, 1e-6)
    assert t["loss"] == "dice_bce" and seg["augment"]["rotate_deg"] == 30.0


def test_overrides_reach_one_stage_or_all():
    r = load_recipe("cascade3d_kits21", ["masses.sampling.patch=[16, 32, 32]", "train.batch_size=1"])
    assert r["stages"][1]["sampling"]["patch"] == [16, 32, 32]
    assert r["stages"][0]["sampling"]["patch"] == [16, 256, 256]
    assert [s["train"]["batch_size"] for s in r["stages"]] == [1, 1]


@pytest.mark.parametrize("text,match", [
    ('name = "x"\nsource = "s"\ndimensionality = "4d"\n', "dimensionality"),
    ('name = "x"\nsource = "s"\ndimensionality = "2d"\n[[stages]]\nname = "a"\nrole = "segment"\n'
     'arch = "nope"\n', "unknown arch"),
    ('name = "x"\nsource = "s"\ndimensionality = "2d"\n[[stages]]\nname = "a"\nrole = "segment"\n'
     'arch = "kidney_net3d"\n', "is 3d"),
    ('name = "x"\nsource = "s"\ndimensionality = "2d"\n[[stages]]\nname = "a"\nrole = "segment"\n'
     'arch = "squeezenet_unet"\n[stages.model]\nclasses = 2\n[stages.output]\nactivation = "softmax"\n'
     'labels = [0, 1]\n[stages.train]\nlr = "fast"\n', "train.lr"),
    ("name = [\n", "not valid TOML"),
])
def test_bad_recipes_are_one_line_errors(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(KidedgeError, match=match) as info:
        load_recipe(str(p))
    assert "\n" not in str(info.value)


def test_unknown_recipe_and_bad_override():
    with pytest.raises(KidedgeError, match="unknown recipe"):
        load_recipe("no_such_recipe")
    with pytest.raises(KidedgeError, match="unknown key"):
        load_recipe("cascade2d_kits21", ["nonsense.a.b.c=1"])
