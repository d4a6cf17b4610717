"""The ``kidedge`` command line: one click group, each command a thin wrapper over a
library call (docs/architecture.md, "The command line"). Heavy modules (torch, onnx) are imported inside
the command that needs them, so ``kidedge infer`` and ``kidedge info`` stay lean.

Exit codes: 0 success, 2 user error (one line on stderr), 1 internal failure.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import traceback

import click

from kidedge import __version__
from kidedge.errors import KidedgeError, NotReadyError


def _library_call(module: str, function: str, issue: str):
    """Import ``module.function`` lazily; a missing implementation is a clean exit 2."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module or module.startswith(exc.name + ".")):
            raise NotReadyError(f"this command is not available in this build yet ({issue})") from exc
        if exc.name in ("torch", "torchvision", "segmentation_models_pytorch", "onnx", "onnxscript"):
            raise KidedgeError(
                f"this command needs '{exc.name}': pip install 'kidedge[train,export]'"
            ) from exc
        raise
    return getattr(mod, function)


def _one_line_errors(fn):
    """Turn exceptions into one line on stderr and the contract's exit codes."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            code = fn(*args, **kwargs)
        except KidedgeError as exc:
            click.echo(f"kidedge: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("kidedge: interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except MemoryError:
            click.echo("kidedge: internal error: out of memory", err=True)
            sys.exit(1)
        except Exception as exc:  # a bug: keep it to one line unless debugging
            if os.environ.get("KIDEDGE_DEBUG"):
                traceback.print_exc()
            msg = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(f"kidedge: internal error: {type(exc).__name__}: {msg}", err=True)
            sys.exit(1)
        sys.exit(int(code or 0))

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kidedge")
def main() -> None:
    """kidedge: kidney and kidney-tumour CT segmentation, from training to edge deployment."""


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--cases", type=click.IntRange(1, 100000), help="Number of cases (default 3; with --training-set 400).")
@click.option("--from-labels", type=click.Path(exists=True, file_okay=False), help="Dataset of real label maps (any supported layout) to give the phantoms real kidney and tumour anatomy.")
@click.option("--training-set", is_flag=True, help="Build the anatomical training set: real body label maps with real KiTS kidneys, every contrast phase, lung bases to pelvis, a grouped train/val/test split.")
@click.option("--bodies", multiple=True, type=click.Path(exists=True, file_okay=False), help="With --training-set: folder of multi-organ body label maps (repeatable; default ../shared/data/btcv-labels and anatomy-labels).")
@click.option("--kidneys", multiple=True, type=click.Path(exists=True, file_okay=False), help="With --training-set: folder of KiTS label maps (repeatable; default ../shared/data/kits19-labels and kits23-labels).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="With --training-set: parallel processes.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (deterministic output).")
@click.option("--montage/--no-montage", default=True, show_default=True, help="Write montage.png with label contours.")
@_one_line_errors
def phantom(out_dir, cases, from_labels, training_set, bodies, kidneys, workers, seed, montage):
    """Write synthetic abdominal CT phantoms in the KiTS layout."""
    if training_set:
        if from_labels:
            raise KidedgeError("phantom: --from-labels and --training-set do not go together (use --kidneys)")
        fn = _library_call("kidedge.phantom.training_set", "write_training_set", "issue 11")
        written = fn(out_dir, bodies=list(bodies) or None, kidneys=list(kidneys) or None,
                     cases=cases, workers=workers, seed=seed, montage=montage)
        click.echo(f"wrote {len(written)} training case(s), sources.json and split.json to {out_dir}")
        return 0
    if bodies or kidneys:
        raise KidedgeError("phantom: --bodies and --kidneys need --training-set")
    fn = _library_call("kidedge.phantom", "write_phantom_dataset", "issue 3")
    written = fn(out_dir, cases=cases or 3, from_labels=from_labels, seed=seed, montage=montage)
    click.echo(f"wrote {len(written)} phantom case(s) to {out_dir}")
    return 0


@main.command()
@click.option("--recipe", help="Recipe name (see --list).")
@click.option("--data", type=click.Path(exists=True, file_okay=False), help="Dataset folder (KiTS19/21/23 or Decathlon layout).")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Run directory for checkpoints, metrics and curves.")
@click.option("--epochs", type=click.IntRange(1, 100000), help="Override the recipe's epochs.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="auto: mixed precision on CUDA, fp32 on the CPU; bf16: bf16 autocast on either "
                   "(1.3-6.5x faster on CPUs with native bf16); fp32: no autocast.")
@click.option("--resume/--no-resume", default=False, help="Resume from RUN_DIR's last checkpoint.")
@click.option("--pretrained", type=click.Path(exists=True, dir_okay=False), help="Local ImageNet-pretrained encoder weights (off by default).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value, e.g. --set train.batch_size=8.")
@click.option("--init-from", type=click.Path(exists=True, file_okay=False),
              help="Fine-tune: start every stage from this earlier run's best weights (fresh optimiser and schedule).")
@click.option("--keep-stage", "keep_stages", multiple=True, metavar="NAME[=RUN]",
              help="With --init-from: take this stage over unchanged, without training, from that run "
                   "or from RUN (repeatable).")
@click.option("--cache", type=click.Path(file_okay=False),
              help="Folder of converted cases (default RUN_DIR/cache); runs on the same data may share one.")
@click.option("--list", "list_recipes", is_flag=True, help="List the recipes and their sources.")
@_one_line_errors
def train(recipe, data, out, epochs, device, precision, resume, pretrained, overrides, init_from, keep_stages, cache,
          list_recipes):
    """Train a recipe from the papers on KiTS-layout data."""
    if list_recipes:
        fn = _library_call("kidedge.train.recipes", "print_recipe_list", "issue 4")
        return fn()
    missing = [n for n, v in (("--recipe", recipe), ("--data", data), ("--out", out)) if not v]
    if missing:
        raise KidedgeError(f"train needs {', '.join(missing)} (or --list)")
    fn = _library_call("kidedge.train.loop", "train_recipe", "issue 4")
    return fn(recipe, data, out, epochs=epochs, device=device, resume=resume, pretrained=pretrained, overrides=list(overrides),
              init_from=init_from, keep_stages=tuple(keep_stages), cache=cache, precision=precision)


@main.command()
@click.argument("run_dir", required=False, type=click.Path())
@click.option("--out", "out", type=click.Path(), help="Model package to write (directory, or .zip).")
@click.option("--fp16", is_flag=True, help="Also write fp16 ONNX (for GPUs).")
@click.option("--int8", is_flag=True, help="Also write int8 ONNX (CPU and TensorRT variants).")
@click.option("--calib", type=click.Path(exists=True, file_okay=False), help="CT dataset for int8 calibration.")
@click.option("--calib-method", type=click.Choice(["minmax", "percentile", "entropy"]), default="percentile", show_default=True,
              help="How int8 activation ranges are set from the calibration slices.")
@click.option("--float-layers", type=click.Choice(["first-last", "none"]), default="first-last", show_default=True,
              help="Convolutions kept in float in the int8 models (recorded in the manifest).")
@click.option("--tensorrt", is_flag=True, help="Also build TensorRT engines (needs TensorRT and a GPU).")
@click.option("--dla-core", type=click.IntRange(0, 7), default=None,
              help="With --tensorrt on a Jetson: build the plans for this DLA core, with GPU fallback.")
@click.option("--allow-int8-fidelity-loss", is_flag=True,
              help="Ship an int8 variant even if it loses more than 0.005 Dice against the truth on the "
                   "held-out cases (by default such a variant is left out; the manifest records the gate).")
@click.option("--int8-cpu-weight-bits", type=click.Choice(["8", "7"]), default=None,
              help="Weight bits of the int8 CPU model: 8 (default), or 7 for x86 CPUs with AVX2 but no "
                   "VNNI, where full-range weights can saturate ONNX Runtime's int8 kernels.")
@click.option("--int8-localiser", is_flag=True,
              help="Also quantise a cascade's localiser (by default it stays float: it decides the crop).")
@click.option("--int8-bias-correction/--no-int8-bias-correction", default=True, show_default=True,
              help="Correct the int8 layers' biases for the mean shift int8 gives their outputs (2D stages).")
@click.option("--verify", "verify", type=click.Path(exists=True), help="Re-check an existing package's hashes and parity instead.")
@_one_line_errors
def export(run_dir, out, fp16, int8, calib, calib_method, float_layers, tensorrt, dla_core, allow_int8_fidelity_loss,
           int8_cpu_weight_bits, int8_localiser, int8_bias_correction, verify):
    """Export a trained run to a model package (ONNX fp32/fp16/int8, TensorRT).

    RUN_DIR may also be a 2D model package (e.g. kidedge/models/default): its PyTorch
    weights are exported again, to quantise it another way or for another CPU."""
    if verify:
        fn = _library_call("kidedge.export.verify", "verify_package", "issue 5")
        return fn(verify)
    if not run_dir or not out:
        raise KidedgeError("export needs RUN_DIR and --out PACKAGE (or --verify PACKAGE)")
    if dla_core is not None and not tensorrt:
        raise KidedgeError("--dla-core is for TensorRT plans; add --tensorrt")
    if allow_int8_fidelity_loss and not int8:
        raise KidedgeError("--allow-int8-fidelity-loss is for the int8 gate; add --int8")
    for flag, value in (("--int8-cpu-weight-bits", int8_cpu_weight_bits), ("--int8-localiser", int8_localiser)):
        if value and not int8:
            raise KidedgeError(f"{flag} is for the int8 models; add --int8")
    fn = _library_call("kidedge.export.package_writer", "export_run", "issue 5")
    return fn(run_dir, out, fp16=fp16, int8=int8, calib=calib, calib_method=calib_method, tensorrt=tensorrt,
              float_nodes="rule" if float_layers == "first-last" else "none",
              tensorrt_settings={"dla_core": dla_core} if dla_core is not None else None,
              allow_int8_fidelity_loss=allow_int8_fidelity_loss,
              int8_cpu_weight_bits=int(int8_cpu_weight_bits) if int8_cpu_weight_bits else None,
              int8_localiser=int8_localiser, bias_correction=int8_bias_correction)


@main.command()
@click.argument("scans", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", type=click.Path(), help="Output file (one scan) or directory.")
@click.option("--model", type=click.Path(), help="Model package (default: the one shipped with kidedge).")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt", "torch"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]), default="auto", show_default=True)
@click.option("--batch", type=click.IntRange(1, 1024), default=None, help="Micro-batch size (slices).")
@click.option("--profile", type=click.Path(dir_okay=False), help="Write the run's profile as JSON.")
@click.option("--overlay", type=click.Path(dir_okay=False), help="Write a PNG of axial slices with labels drawn over the CT.")
@click.option("--no-gate", is_flag=True, help="Run stage 2 on every slice (disable cascade gating).")
@click.option("--dla-core", type=click.IntRange(0, 7), default=None,
              help="Jetson: run TensorRT plans built for this DLA core (a stage without one runs its GPU plan).")
@click.option("--format", "fmt", type=click.Choice(["nifti", "dicom-seg"]), default="nifti", show_default=True,
              help="Label map format: NIfTI, or a DICOM SEG object referencing the source series (DICOM inputs only).")
@click.option("--through-plane-mm", type=float, default=None,
              help="Average a 2D segmenter's class probabilities over slices with a Gaussian of this sigma "
                   "(mm) instead of the package's (the built-in: 4); 0: each slice alone.")
@_one_line_errors
def infer(scans, output, model, backend, precision, batch, profile, overlay, no_gate, fmt, dla_core, through_plane_mm):
    """Segment kidneys, tumours and cysts in CT scans (NIfTI or DICOM folders)."""
    fn = _library_call("kidedge.runtime.command", "infer_command", "issue 6")
    return fn(list(scans), output=output, model=model, backend=backend, precision=precision,
              batch=batch, profile=profile, overlay=overlay, gate=not no_gate, fmt=fmt, dla_core=dla_core,
              through_plane_mm=through_plane_mm)


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Output folder (default ./kidedge_batch); results mirror INPUT's folders, batch_summary.csv lists every scan.")
@click.option("--ray-address", help="An existing Ray cluster (auto, host:6379, ray://host:10001); default: a private local Ray for this run.")
@click.option("--workers", type=click.IntRange(1, 100000), help="Segmenting workers, one model load each (default: every CPU).")
@click.option("--model", type=click.Path(), help="Model package (default: the one shipped with kidedge).")
@click.option("--format", "fmt", type=click.Choice(["nifti", "dicom-seg"]), default="nifti", show_default=True,
              help="Label map format (dicom-seg: DICOM series inputs only).")
@_one_line_errors
def batch(input_path, output, ray_address, workers, model, fmt):
    """Segment every scan of a folder tree or list file on Ray (resumable; needs kidedge[cluster])."""
    fn = _library_call("kidedge.batch.pipeline", "run_batch", "issue 15")
    return fn(input_path, output, ray_address=ray_address, workers=workers, model=model, fmt=fmt)


@main.command()
@click.option("--pred", type=click.Path(exists=True, file_okay=False), help="Folder of predicted label maps.")
@click.option("--gt", type=click.Path(exists=True, file_okay=False), help="Folder of ground truth (any supported layout).")
@click.option("--package", "package", type=click.Path(exists=True), help="Instead: segment --data's cases with this model package and score them.")
@click.option("--data", type=click.Path(exists=True, file_okay=False), help="With --package: labelled dataset (any supported layout).")
@click.option("--split", type=click.Path(exists=True, dir_okay=False), help="With --package: a training run's split.json; score its --part.")
@click.option("--part", type=click.Choice(["train", "val", "test"]), default="test", show_default=True, help="With --split: which part.")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "fp16", "int8"]), help="With --package: precision(s) to score (default int8).")
@click.option("--no-gate", is_flag=True, help="With --package: run stage 2 on every slice.")
@click.option("--record", is_flag=True, help="With --package: store the means in the package manifest's provenance.")
@click.option("--out", "out", type=click.Path(dir_okay=False), help="Write per-case and aggregate results (.json; with --pred a .csv is written beside it).")
@click.option("--tolerance", default=2.0, show_default=True, type=float, help="Surface Dice tolerance in mm (--pred mode).")
@_one_line_errors
def evaluate(pred, gt, package, data, split, part, precisions, no_gate, record, out, tolerance):
    """Score predictions (--pred/--gt), or a model package on labelled cases (--package/--data),
    with the KiTS hierarchical Dice and surface Dice."""
    if package is not None:
        if pred or gt or not data:
            raise KidedgeError("evaluate --package needs --data DIR (and takes no --pred/--gt)")
        fn = _library_call("kidedge.bench.package_eval", "evaluate_package_command", "issue 12")
        return fn(package, data, split=split, part=part, precisions=precisions, gate=not no_gate,
                  record=record, out=out)
    if not pred or not gt:
        raise KidedgeError("evaluate needs --pred DIR and --gt DIR (or --package PACKAGE --data DIR)")
    fn = _library_call("kidedge.metrics", "evaluate_dirs", "issue 3")
    fn(pred, gt, out=out, tolerance_mm=tolerance)  # returns the report dict, not an exit code
    return 0


@main.command(context_settings={"ignore_unknown_options": False})
@click.option("--quick", is_flag=True, help="A small version that runs in under two minutes.")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Results folder (default benchmarks/results/<machine>).")
@click.option("--model", type=click.Path(), help="Model package (default: the shipped one).")
@click.option("--labels", type=click.Path(exists=True, file_okay=False), help="Real label maps for phantom geometry (default ../shared/data/kits19-labels when present).")
@_one_line_errors
def bench(quick, out, model, labels):
    """Latency benchmark report: kidedge against the baselines users would otherwise run."""
    fn = _library_call("kidedge.bench.run", "run_bench", "issue 7")
    return fn(quick=quick, out=out, model=model, labels=labels)


@main.command()
@click.option("--out", "out", default="demo_out", show_default=True, type=click.Path(file_okay=False))
@_one_line_errors
def demo(out):
    """Make a phantom scan and segment it with the built-in model."""
    fn = _library_call("kidedge.demo", "run_demo", "issue 8")
    return fn(out)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@_one_line_errors
def info(as_json):
    """Versions, backends, CPU and GPU of this machine."""
    from kidedge.environment import describe, format_description

    d = describe()
    if as_json:
        import json

        click.echo(json.dumps(d, indent=2))
    else:
        click.echo(format_description(d))


if __name__ == "__main__":
    main()
