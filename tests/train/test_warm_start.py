"""Fine-tuning from an earlier run (``kidedge train --init-from RUN --keep-stage NAME``):
a kept stage is the earlier run's, a trained stage starts from the earlier best weights,
a shared case cache is used as is, and runs that would leak held-out cases or load
weights of another shape are refused before any training."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from kidedge.cli import main
from kidedge.errors import KidedgeError
from kidedge.preprocess import PreprocessSpec
from kidedge.train.loop import StageTrainer, train_recipe
from kidedge.train.models import build_model
from kidedge.train.warm_start import _same_but_context, expand_input_channels

# the patched no-step epochs below make torch warn that the scheduler stepped first
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")

# the built-in cascade's recipe, shrunk to seconds on a 2-core CPU
TINY = ["localise.preprocess.size=[64, 64]", "segment.sampling.patch=[64, 64]", "train.batch_size=4",
        "sampling.samples_per_epoch=8", "model.decoder_channels=[16, 8, 8, 8]"]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def first_run(phantom_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("warm") / "first"
    train_recipe("kidedge_default", phantom_data, out, epochs=1, device="cpu", overrides=TINY)
    return out


def test_keep_stage_and_start_from_best_weights(first_run, phantom_data, tmp_path, monkeypatch):
    # no optimiser step: the fine-tuned stage's best weights are then the ones it started from
    monkeypatch.setattr(StageTrainer, "_train_epoch", lambda self, *a, **k: 0.0)
    out = tmp_path / "second"
    train_recipe("kidedge_default", phantom_data, out, epochs=1, device="cpu", overrides=TINY,
                 init_from=first_run, keep_stages=("localise",), cache=first_run / "cache")
    assert _same(_weights(out / "localise" / "best.pt"), _weights(first_run / "localise" / "best.pt"))
    assert _same(_weights(out / "segment" / "best.pt"), _weights(first_run / "segment" / "best.pt"))
    assert not (out / "cache").exists()  # the shared cache was used
    run = json.loads((out / "run.json").read_text())
    first = json.loads((first_run / "run.json").read_text())
    localise, segment = run["stages"]
    assert localise["kept_from"] == str(first_run)
    assert localise["metrics"] == first["stages"][0]["metrics"]
    assert segment["init_from"].endswith("segment/best.pt") and "kept_from" not in segment
    assert run["init_from"] == {"run": str(first_run), "kept_stages": ["localise"],
                                "kept_from": {"localise": str(first_run)}}
    # stages of two runs put together: the localiser of this run, the segmenter of the first
    both = tmp_path / "both"
    train_recipe("kidedge_default", phantom_data, both, epochs=1, device="cpu", overrides=TINY,
                 init_from=first_run, keep_stages=("segment", f"localise={out}"), cache=first_run / "cache")
    assert not (both / "cache").exists()
    assert _same(_weights(both / "localise" / "best.pt"), _weights(out / "localise" / "best.pt"))
    assert _same(_weights(both / "segment" / "best.pt"), _weights(first_run / "segment" / "best.pt"))
    joined = json.loads((both / "run.json").read_text())
    assert [s["kept_from"] for s in joined["stages"]] == [str(out), str(first_run)]
    assert joined["init_from"]["kept_from"] == {"segment": str(first_run), "localise": str(out)}
    assert joined["metrics"]["val"]  # the held-out scoring ran on the assembled cascade


def test_without_init_the_segment_starts_elsewhere(first_run, phantom_data, tmp_path, monkeypatch):
    """The check above can fail: a fresh run's untrained weights differ from the first run's."""
    monkeypatch.setattr(StageTrainer, "_train_epoch", lambda self, *a, **k: 0.0)
    out = tmp_path / "fresh"
    train_recipe("kidedge_default", phantom_data, out, epochs=1, device="cpu", overrides=TINY,
                 cache=first_run / "cache")
    assert not _same(_weights(out / "segment" / "best.pt"), _weights(first_run / "segment" / "best.pt"))


def test_refusals(first_run, phantom_data, tmp_path):
    split = json.loads((first_run / "split.json").read_text())
    swapped = {"train": split["test"] + split["val"] + split["train"][2:], "val": split["train"][:1],
               "test": split["train"][1:2]}
    split_file = tmp_path / "swapped.json"
    split_file.write_text(json.dumps(swapped))
    with pytest.raises(KidedgeError, match="held out in this run"):
        train_recipe("kidedge_default", phantom_data, tmp_path / "a", epochs=1, device="cpu",
                     overrides=TINY + [f"split.file={json.dumps(str(split_file))}"], init_from=first_run)
    with pytest.raises(KidedgeError, match="do not fit"):
        train_recipe("kidedge_default", phantom_data, tmp_path / "b", epochs=1, device="cpu",
                     overrides=TINY + ["segment.model.decoder_channels=[16, 16, 8, 8]"], init_from=first_run)
    assert not (tmp_path / "b").exists()  # refused before the run folder was made
    with pytest.raises(KidedgeError, match="no such stage"):
        train_recipe("kidedge_default", phantom_data, tmp_path / "c", overrides=TINY, init_from=first_run,
                     keep_stages=("kidney",))
    with pytest.raises(KidedgeError, match="nothing would be trained"):
        train_recipe("kidedge_default", phantom_data, tmp_path / "f", overrides=TINY, init_from=first_run,
                     keep_stages=("localise", "segment"))
    with pytest.raises(KidedgeError, match="given twice"):
        train_recipe("kidedge_default", phantom_data, tmp_path / "g", overrides=TINY, init_from=first_run,
                     keep_stages=("localise", f"localise={first_run}"))
    with pytest.raises(KidedgeError, match=f"--keep-stage localise={tmp_path}: no run.json"):
        train_recipe("kidedge_default", phantom_data, tmp_path / "h", overrides=TINY, init_from=first_run,
                     keep_stages=(f"localise={tmp_path}",))
    with pytest.raises(KidedgeError, match="give --init-from"):
        train_recipe("kidedge_default", phantom_data, tmp_path / "d", overrides=TINY, keep_stages=("localise",))
    res = CliRunner().invoke(main, ["train", "--recipe", "kidedge_default", "--data", str(phantom_data),
                                    "--out", str(tmp_path / "e"), "--init-from", str(tmp_path)])
    assert res.exit_code != 0 and "no run.json" in res.output and "Traceback" not in res.output


def test_grow_to_2_5d(first_run, phantom_data, tmp_path, monkeypatch):
    """A 2D stage warm-started as 2.5D (context 1, three input channels): the first
    convolution holds the earlier weights at the centre channel and zeros for the neighbours,
    so the grown model's output on any three slices equals the earlier model's on the centre."""
    monkeypatch.setattr(StageTrainer, "_train_epoch", lambda self, *a, **k: 0.0)
    out = tmp_path / "grown"
    train_recipe("kidedge_default", phantom_data, out, epochs=1, device="cpu", cache=first_run / "cache",
                 overrides=TINY + ["segment.preprocess.context=1", "segment.model.in_channels=3"],
                 init_from=first_run, keep_stages=("localise",))
    run = json.loads((out / "run.json").read_text())
    segment = run["stages"][1]
    assert segment["init_context_grown"] == [0, 1] and segment["preprocess"]["context"] == 1
    kwargs = dict(segment["model_kwargs"])
    old_model = build_model("squeezenet_unet", **{**kwargs, "in_channels": 1}).eval()
    old_model.load_state_dict(_weights(first_run / "segment" / "best.pt"))
    new_model = build_model("squeezenet_unet", **kwargs).eval()
    new_model.load_state_dict(_weights(out / "segment" / "best.pt"))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(new_model(x), old_model(x[:, 1:2]), rtol=1e-5, atol=1e-5)
    # the neighbours' channels are live parameters (zero, not dropped): they change the output
    first = next(k for k, v in new_model.state_dict().items() if v.dim() == 4 and v.shape[1] == 3)
    with torch.no_grad():
        new_model.state_dict()[first][:, 0] += 0.5
        assert not torch.allclose(new_model(x), old_model(x[:, 1:2]), atol=1e-3)


def test_grow_refusals():
    state = {"conv.weight": torch.ones(4, 1, 3, 3), "head.weight": torch.ones(2, 4, 1, 1)}
    target = {"conv.weight": torch.zeros(4, 3, 3, 3), "head.weight": torch.zeros(2, 4, 1, 1)}
    grown = expand_input_channels(state, target, 0, 1)
    assert grown["conv.weight"][:, 1].eq(1).all() and grown["conv.weight"][:, [0, 2]].eq(0).all()
    with pytest.raises(KidedgeError, match="only the input channels"):
        expand_input_channels(state, {**target, "head.weight": torch.zeros(3, 4, 1, 1)}, 0, 1)
    with pytest.raises(KidedgeError, match="only the input channels"):
        expand_input_channels(state, {**target, "conv.weight": torch.zeros(4, 5, 3, 3)}, 0, 1)
    old = {"model_kwargs": {"in_channels": 3, "classes": 4}, "preprocess": {"context": 1}}
    spec = PreprocessSpec(hu_window=(-200.0, 400.0), context=0)
    # less context (channels dropped) is refused; so is a channel count that does not match it
    assert not _same_but_context(old, {"model_kwargs": {"in_channels": 1, "classes": 4}, "preprocess": spec})
    old = {"model_kwargs": {"in_channels": 1, "classes": 4}, "preprocess": {"context": 0}}
    two = spec.replace(context=2)
    assert not _same_but_context(old, {"model_kwargs": {"in_channels": 3, "classes": 4}, "preprocess": two})
    assert _same_but_context(old, {"model_kwargs": {"in_channels": 5, "classes": 4}, "preprocess": two})
    assert not _same_but_context(old, {"model_kwargs": {"in_channels": 5, "classes": 3}, "preprocess": two})


def test_fine_tune_from_a_model_package(first_run, phantom_data, tmp_path, monkeypatch):
    """The built-in model ships as a package, not a run: its weights (hash-checked) and the
    run its manifest records stand in, split check included."""
    from kidedge.export.package_writer import export_run

    package = tmp_path / "pkg"
    export_run(first_run, package, quiet=True)
    monkeypatch.setattr(StageTrainer, "_train_epoch", lambda self, *a, **k: 0.0)
    out = tmp_path / "tuned"
    train_recipe("kidedge_default", phantom_data, out, epochs=1, device="cpu", overrides=TINY,
                 init_from=package, keep_stages=("localise",), cache=first_run / "cache")
    for stage in ("localise", "segment"):
        assert _same(_weights(out / stage / "best.pt"), _weights(package / stage / "model.pt"))
    localise = json.loads((out / "run.json").read_text())["stages"][0]
    assert localise["kept_from"] == str(package) and localise["preprocess"] == json.loads(
        (first_run / "run.json").read_text())["stages"][0]["preprocess"]
    split = json.loads((first_run / "split.json").read_text())
    swapped = {"train": split["test"] + split["val"] + split["train"][2:], "val": split["train"][:1],
               "test": split["train"][1:2]}
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    with pytest.raises(KidedgeError, match="held out in this run"):
        train_recipe("kidedge_default", phantom_data, tmp_path / "leak", epochs=1, device="cpu", init_from=package,
                     overrides=TINY + [f"split.file={json.dumps(str(tmp_path / 'swapped.json'))}"])
    with open(package / "segment" / "model.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(KidedgeError, match="does not match the manifest"):
        train_recipe("kidedge_default", phantom_data, tmp_path / "bad", epochs=1, device="cpu", init_from=package,
                     overrides=TINY)
    assert not (tmp_path / "bad").exists()


def test_split_check_is_per_data_folder(first_run, phantom_data, tmp_path):
    """Case ids name cases of a data folder: on another folder the same id is another case."""
    from kidedge.train.warm_start import WarmStart

    warm = WarmStart(first_run)
    split = json.loads((first_run / "split.json").read_text())
    swapped = {"train": split["val"], "val": split["train"][:1], "test": split["test"]}
    with pytest.raises(KidedgeError, match="held out in this run"):
        warm.check_split(swapped, phantom_data)
    warm.check_split(swapped, tmp_path)  # another folder: no refusal
