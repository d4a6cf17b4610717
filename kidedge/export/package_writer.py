"""``export_run``: a trained run directory -> a model package, written atomically.

The package is built in a temporary folder next to ``--out`` and renamed into place only
when everything (export, parity, quantisation, fidelity, manifest) succeeded
(:func:`kidedge.export.package_files.publish`); an existing ``--out`` is never
overwritten. Layout::

    PACKAGE/manifest.json
    PACKAGE/<stage>/fp32.onnx  fp16.onnx  int8-cpu.onnx  int8-trt.onnx  model.pt
    PACKAGE/<stage>/reference.npz                  (fp32 input + PyTorch logits, for --verify)
    PACKAGE/<stage>/<tensorrt key>.plan  .timing-cache
"""

from __future__ import annotations

import datetime
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.export.from_package import is_package, run_from_package
from kidedge.export.held_out import held_out_volumes, run_split_volumes, volumes_from_dataset
from kidedge.export.onnx_export import (
    FP32_TOLERANCE,
    check_parity,
    compare_logits,
    export_onnx,
    load_stage_model,
    ort_session,
    run_onnx,
    run_torch,
)
from kidedge.export.package_files import library_versions, manifest_stage, publish, read_run
from kidedge.export.parity_checks import OrtRunner, check_dynamic_hw, parity_inputs
from kidedge.export.stage_inputs import stage_spec
from kidedge.package import FORMAT, FORMAT_VERSION, write_manifest

#: fp16 logits are compared with PyTorch fp32 and recorded; export fails only if fp16
#: flips more than this fraction of pixels (fp16 rounding alone flips far fewer).
FP16_MIN_AGREEMENT = 0.99


#: Why a cascade's localiser gets no int8 files by default (recorded in the manifest). On the
#: built-in model an int8 localiser moved the crop onto the spine on the real DICOM sample, for
#: about 0.13 s saved on a 602-slice scan (benchmarks/results/int8_variants.md).
LOCALISER_KEPT_FLOAT = (
    "kept float: the localiser decides the segmenter's crop and is a small part of the scan's time; "
    "an int8 flip in its kidney map moves the whole crop, so int8 runs it in fp32 (fp16 on a GPU); "
    "--int8-localiser quantises it")


def export_run(run_dir, out, fp16: bool = False, int8: bool = False, calib=None,
               calib_method: str = "percentile", tensorrt: bool = False, *,
               name: str | None = None, volume_shape=(32, 256, 256), spacing=(3.0, 1.5, 1.5),
               held_out_cases: int = 2, calib_cases: int = 16, slices_per_case: int = 16,
               parity_slices: int = 6, depth: int = 16, cpu_format: str | None = None,
               float_nodes: str = "rule", threads: int = 2, tensorrt_settings: dict | None = None,
               data: str = "auto", max_slices: int = 48, model_factory=None, quiet: bool = False,
               allow_int8_fidelity_loss: bool = False, int8_cpu_weight_bits: int | None = None,
               int8_localiser: bool = False, bias_correction: bool = True) -> int:
    """Export every stage of ``run_dir`` to a model package at ``out``.

    Args:
        run_dir: training run (run.json + checkpoints, see the run directory contract), or a
            2D model package, whose weights and recorded run stand in for the run
            (:mod:`kidedge.export.from_package`).
        out: package directory to create, or a path ending in ``.zip``; must not exist.
        fp16: also write fp16 ONNX.
        int8: also write int8-cpu and int8-trt ONNX (static PTQ).
        calib: CT dataset folder for calibration (any layout kidedge.io reads); default:
            the run's ``train`` cases (``data="auto"``), else phantom cases.
        calib_method: ``"minmax"``, ``"percentile"`` or ``"entropy"``.
        tensorrt: also build TensorRT plans (needs TensorRT and a GPU).
        name: package name (default: the recipe, else the run folder's name).
        volume_shape, spacing: phantom volumes for parity, calibration and fidelity (when
            phantoms are used).
        held_out_cases: cases for parity and the fidelity report.
        data: ``"auto"``: when the run's dataset folder (run.json ``data``) and split are
            on this machine, fidelity and parity use its ``test`` cases (else ``val``) and
            calibration its ``train`` cases; otherwise phantoms. ``"phantoms"``: always
            phantoms.
        max_slices: run cases are cut to at most this many contiguous slices around the
            kidneys (bounded export time).
        calib_cases, slices_per_case: calibration set size (phantoms or ``calib`` cases).
            16 x 16: on the built-in model's validation phantoms int8 lost 0.0095 kidney Dice
            against fp32's truth score with percentile calibration (0.0057 with min-max), against
            0.0117 with the earlier 4 x 8 (benchmarks/results/calibration_choice.md).
        parity_slices: slices for the ONNX-vs-PyTorch parity check.
        depth: unused (3D stages are checked, calibrated and scored on their patch, see
            :mod:`kidedge.export.export3d`).
        cpu_format: ``"QDQ"`` or ``"QOperator"`` for int8-cpu (default: the measured choice).
        float_nodes: ``"rule"`` (first and last Conv stay float) or ``"none"``.
        threads: ONNX Runtime / torch threads used for checks.
        tensorrt_settings: extra :class:`~kidedge.export.tensorrt_build.BuildSettings` fields
            (``batches``, ``dla_core``, ``workspace_bytes``, ...).
        model_factory: ``f(arch, **model_kwargs) -> nn.Module`` (default: the model
            registry, :func:`kidedge.train.models.build_model`).
        quiet: no progress lines.
        allow_int8_fidelity_loss: ship an int8 variant that fails the int8 gate
            (:func:`kidedge.export.fidelity.int8_gate`: more than 0.005 Dice lost against the
            truth on the held-out cases); by default it is left out of the package. Either
            way the decision is in the manifest (``export_report.int8_gate``).
        int8_cpu_weight_bits: 8 (default: full-range weights) or 7 (for x86 CPUs with AVX2
            but no VNNI, see :mod:`kidedge.export.quantize`); recorded as the int8-cpu file's
            ``weight_bits``, which the runtime checks against the CPU it runs on.
        int8_localiser: also quantise a cascade's localiser (by default it gets no int8
            files and runs in float beside an int8 segmenter, see :data:`LOCALISER_KEPT_FLOAT`).
        bias_correction: correct the int8 layers' biases for the mean shift int8 gives
            their outputs (:mod:`kidedge.export.bias_correction`; 2D stages, both variants).

    Returns:
        0 (the CLI's exit code).
    """
    import torch

    from kidedge.export.quantize import CPU_WEIGHT_BITS, DEFAULT_CPU_FORMAT, DEFAULT_CPU_WEIGHT_BITS

    run_dir, out = Path(run_dir), Path(out)
    if out.exists():
        raise KidedgeError(f"{out}: already exists; refusing to overwrite (choose a new --out)")
    source, from_package = run_dir, is_package(run_dir)
    if from_package:  # the shipped model has no run folder: its package stands in
        run, run_dir = run_from_package(run_dir)
    else:
        run = read_run(run_dir)
    if calib_method not in ("minmax", "percentile", "entropy"):
        raise KidedgeError(f"unknown calibration method {calib_method!r} (minmax, percentile, entropy)")
    if float_nodes not in ("rule", "none"):
        raise KidedgeError(f"float_nodes must be 'rule' or 'none', got {float_nodes!r}")
    if calib and not int8:
        raise KidedgeError("--calib is for int8 calibration; add --int8")
    weight_bits = DEFAULT_CPU_WEIGHT_BITS if int8_cpu_weight_bits is None else int8_cpu_weight_bits
    if weight_bits not in CPU_WEIGHT_BITS:
        raise KidedgeError(f"int8-cpu weight bits must be one of {CPU_WEIGHT_BITS}, got {weight_bits!r}")
    if data not in ("auto", "phantoms"):
        raise KidedgeError(f"data must be 'auto' or 'phantoms', got {data!r}")
    trt = None
    if tensorrt:
        from kidedge.export.tensorrt_build import require_tensorrt

        trt = require_tensorrt()  # before any work: a one-line error without TensorRT/GPU
    cpu_format = cpu_format or DEFAULT_CPU_FORMAT
    torch.set_num_threads(threads)
    dim = run["dimensionality"]
    say = (lambda *a: None) if quiet else (lambda msg: print(f"kidedge export: {msg}", flush=True))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        held_out, held_out_source = None, "phantoms"
        if data == "auto":
            for part in ("test", "val"):
                held_out = run_split_volumes(run, part, held_out_cases, max_slices)
                if held_out:
                    held_out_source = f"run split '{part}' of {run['data']}"
                    break
        if not held_out:
            held_out = held_out_volumes(held_out_cases, volume_shape, spacing)
        say(f"held-out cases for parity and fidelity: {held_out_source} ({len(held_out)})")
        calib_vols = None
        if int8 and not calib and data == "auto":
            calib_vols = run_split_volumes(run, "train", calib_cases, max(max_slices, 64))
            if not calib_vols and from_package:
                # printed even with quiet: int8 from a package is then calibrated on other data
                print(f"kidedge export: note: the data the package was trained on ({run.get('data')}) is not "
                      "here: int8 is calibrated on procedural phantoms; give --calib DIR (CT like the "
                      "package's training data) for the package's own calibration", flush=True)
        stages, report = [], {"sizes": {}, "parity": {}, "fidelity": {}, "quantisation": {},
                              "onnx": {}, "held_out_source": held_out_source,
                              "held_out_cases": [v.source for v in held_out]}
        for st in run["stages"]:
            sname = st["name"]
            sdir = tmp / sname
            sdir.mkdir()
            say(f"stage {sname}: loading {st['arch']} from {st['checkpoint']}")
            model = load_stage_model(run_dir, st, model_factory)
            spec = stage_spec(st)
            x = parity_inputs(held_out[0], st, dim, parity_slices, depth)
            torch_logits = run_torch(model, x)

            # 1. fp32 ONNX + parity on real preprocessed slices.
            fp32_path = sdir / "fp32.onnx"
            # a 3D stage runs on its fixed patch: only the batch (windows per call) varies
            info = export_onnx(model, fp32_path, x[:1], dim, dynamic_hw=dim != "3d")
            dyn = check_dynamic_hw(model, fp32_path, x, threads) if dim == "2d" else None
            if dyn is not None and not dyn["ok"]:
                if spec.in_plane != "size":
                    raise KidedgeError(f"stage {sname}: the model does not run at other input sizes "
                                       f"after ONNX export ({dyn.get('error', 'logits differ')}), and its "
                                       f"preprocessing ({spec.in_plane}) needs them")
                info = export_onnx(model, fp32_path, x[:1], dim, dynamic_hw=False)
            info["dynamic_hw_check"] = dyn
            parity = {"fp32": check_parity(torch_logits, run_onnx(ort_session(fp32_path, threads), x),
                                           FP32_TOLERANCE, f"{fp32_path.name} of stage {sname}")}
            say(f"stage {sname}: fp32 ONNX parity max |diff| {parity['fp32']['max_abs_diff']:.2e}")
            ref_n = min(2, len(x))
            np.savez_compressed(sdir / "reference.npz", input=x[:ref_n], logits=torch_logits[:ref_n])
            torch.save(model.state_dict(), sdir / "model.pt")
            files = {"fp32": {"path": f"{sname}/fp32.onnx"}, "torch": {"path": f"{sname}/model.pt"}}
            # PyTorch itself is checked by parity above; fidelity compares ONNX precisions.
            runners = {"fp32": OrtRunner(fp32_path, threads)}

            # 2. fp16.
            if fp16:
                from kidedge.export.fp16 import convert_fp16

                report["quantisation"].setdefault(sname, {})["fp16"] = convert_fp16(fp32_path, sdir / "fp16.onnx")
                parity["fp16"] = compare_logits(torch_logits, run_onnx(ort_session(sdir / "fp16.onnx", threads), x))
                if parity["fp16"]["argmax_agreement"] < FP16_MIN_AGREEMENT:
                    raise KidedgeError(f"stage {sname}: fp16 ONNX agrees with PyTorch on only "
                                       f"{parity['fp16']['argmax_agreement']:.3f} of pixels (< {FP16_MIN_AGREEMENT})")
                files["fp16"] = {"path": f"{sname}/fp16.onnx"}
                runners["fp16"] = OrtRunner(sdir / "fp16.onnx", threads)

            # 3. int8: both variants from one calibration; a cascade's localiser stays float
            # unless asked (see int8_localiser).
            if int8 and st["role"] == "localise" and not int8_localiser:
                report["quantisation"].setdefault(sname, {})["int8"] = LOCALISER_KEPT_FLOAT
                say(f"stage {sname}: no int8 (the localiser stays float; --int8-localiser quantises it)")
            elif int8:
                from kidedge.export.calibration import SliceCalibrationReader, calibration_inputs
                from kidedge.export.quantize import (
                    float_node_rule,
                    prepare_for_quantization,
                    quantize_int8,
                )

                if calib:
                    vols, calib_source = volumes_from_dataset(calib, max_cases=calib_cases), str(calib)
                elif calib_vols:
                    vols, calib_source = calib_vols, f"run split 'train' of {run['data']}"
                else:
                    from kidedge.export.held_out import phantom_volume

                    # Calibration phantoms use seeds 1000+, disjoint from held-out (10000+).
                    vols = (phantom_volume(1000 + i, volume_shape, spacing) for i in range(calib_cases))
                    calib_source = "phantoms"
                say(f"stage {sname}: calibrating int8 ({calib_method}) on {calib_source}")
                if dim == "3d":
                    from kidedge.export.export3d import calibration_windows

                    vols = list(vols)  # also the cases int8's float layers are chosen on
                    cin, csum = calibration_windows(vols, st, slices_per_case)
                else:
                    cin, csum = calibration_inputs(vols, st, dim, slices_per_case, depth)
                reader = SliceCalibrationReader(cin)
                work = tmp / ".work" / sname
                work.mkdir(parents=True)
                prepared = prepare_for_quantization(fp32_path, work / "prepared.onnx")
                cache, splits = work / "calibration.json", None
                if dim == "2d":  # per-branch int8 scales for a U-Net skip concatenation
                    from kidedge.export.concat_split import split_for_int8

                    prepared, splits, cache = split_for_int8(prepared, reader, calib_method, work)
                exclude = float_node_rule(prepared) if float_nodes == "rule" else []
                q = {"calibration": {**csum, "method": calib_method, "source": calib_source},
                     "float_nodes_rule": "first and last Conv stay float" if float_nodes == "rule" else "none",
                     **({"concat_split": splits} if splits is not None else {})}
                for variant in ("int8-cpu", "int8-trt"):
                    path = sdir / f"{variant}.onnx"
                    if dim == "3d" and variant == "int8-cpu":  # + float layers: ORT's, and for fidelity
                        from kidedge.export.int8_3d import quantize_cpu

                        q[variant] = quantize_cpu(prepared, path, reader, calib_method, exclude, cpu_format, cache,
                                                  fidelity=(fp32_path, vols, st, cin), reduce_range=weight_bits == 7)
                        exclude = [*exclude, *q[variant]["fidelity_fallback"]["kept_float"]]
                    else:
                        q[variant] = quantize_int8(prepared, path, reader, variant, calib_method, exclude,
                                                   cpu_format=cpu_format, calibration_cache=cache,
                                                   reduce_range=variant == "int8-cpu" and weight_bits == 7)
                        if bias_correction and dim == "2d":  # 3D int8-cpu picks float layers by fidelity first
                            from kidedge.export.bias_correction import correct_biases

                            say(f"stage {sname}: {variant} bias correction")
                            q[variant]["bias_correction"] = correct_biases(prepared, path, cin, threads)
                        if variant == "int8-cpu" and exclude:
                            from kidedge.export.int8_3d import ort_cpu_int8_layers

                            # float in the file, int8 where ORT's optimiser fuses it (see quantize)
                            q[variant]["ort_cpu_runs_int8_anyway"] = ort_cpu_int8_layers(path, exclude)
                    runners[variant] = OrtRunner(path, threads, variant)
                    parity[variant] = compare_logits(torch_logits, runners[variant](x))
                    files[variant] = {"path": f"{sname}/{variant}.onnx"}
                    if variant == "int8-cpu":
                        files[variant]["weight_bits"] = weight_bits
                    say(f"stage {sname}: {variant} argmax agreement {parity[variant]['argmax_agreement']:.4f}")
                report["quantisation"].setdefault(sname, {}).update(q)

            # 4. TensorRT: one optimisation profile per input shape bucket (2D: each up to it).
            from kidedge.export.tensorrt_build import input_buckets

            buckets = input_buckets(spec, x.shape, dim, (tensorrt_settings or {}).get("buckets"))
            if tensorrt:
                from kidedge.export.tensorrt_build import build_stage_plans, stage_build_settings

                extra = {k: v for k, v in (tensorrt_settings or {}).items() if k != "buckets"}
                if dim == "3d" and "batch" not in extra:
                    from kidedge.export.export3d import TRT_BATCHES

                    extra["batch"] = TRT_BATCHES[-1]  # one bucket, the patch; a few windows per call
                settings = stage_build_settings(int(x.shape[1]), buckets, int(x.shape[2]) if dim == "3d" else None,
                                                **{"min_side": spec.pad_multiple if dim == "2d" else None, **extra})
                onnx_for = {"fp16": fp32_path}
                if "int8-trt" in files:
                    onnx_for["int8"] = sdir / "int8-trt.onnx"
                say(f"stage {sname}: building TensorRT plans {sorted(onnx_for)}")
                files["tensorrt"] = build_stage_plans(sdir, sname, onnx_for, settings, trt)

            # 5. Fidelity against fp32 and the truth on the held-out cases.
            say(f"stage {sname}: fidelity on {len(held_out)} held-out cases")
            report["fidelity"][sname] = fidelity = _fidelity(runners, held_out, st, dim)
            report["parity"][sname] = parity
            report["onnx"][sname] = info
            stages.append(manifest_stage(st, spec, x, dim, files, parity, fidelity))
            stages[-1]["input"]["buckets"] = [list(b) for b in buckets]
            del runners, model

        shutil.rmtree(tmp / ".work", ignore_errors=True)
        if int8:
            _apply_int8_gate(report, stages, tmp, allow_int8_fidelity_loss, say)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "name": name or run.get("recipe") or source.name,
            "architecture": "+".join(s["arch"] for s in run["stages"]),
            "dimensionality": dim,
            "classes": run["classes"],
            "input_layout": "NCDHW" if dim == "3d" else "NCHW",
            "stages": stages,
            "provenance": {
                "recipe": run.get("recipe"), "data": run.get("data"), "split": run.get("split"),
                "training_metrics": run.get("metrics"),
                # as given (no absolute path of the export machine in a shipped package)
                "run_dir": run["exported_from_package"]["run_dir"] if from_package else str(source),
                **({"exported_from_package": {**run["exported_from_package"], "path": str(source)}}
                   if from_package else {}),
                "library_versions": library_versions(),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "export_machine": platform.platform(),
            },
            "export_report": report,
        }
        write_manifest(tmp, manifest)
        for st in manifest["stages"]:
            report["sizes"][st["name"]] = {p: e["bytes"] for p, e in st["files"].items() if "bytes" in e}
        write_manifest(tmp, manifest)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"wrote {out}")
    return 0


def _apply_int8_gate(report: dict, stages: list[dict], package_dir: Path, allow: bool, say) -> None:
    """Judge the int8 variants on the fidelity just measured; record the decision and
    remove the refused variants' files. A refusal is printed even with ``quiet``."""
    from kidedge.export.fidelity import drop_refused_variants, int8_gate
    from kidedge.export.quantize import VARIANTS

    report["int8_gate"] = gate = int8_gate(report["fidelity"], VARIANTS, allow_loss=allow)
    drop_refused_variants(stages, gate, package_dir)
    for variant, g in gate["variants"].items():
        if g["passed"]:
            say(f"{variant}: passed the int8 gate")
        else:
            print(f"kidedge export: {variant}: {g['decision']}: {'; '.join(g['failures'])}", flush=True)


def _fidelity(runners: dict, volumes, stage: dict, dim: str) -> dict:
    from kidedge.export.fidelity import fidelity_report

    if dim == "3d":
        from kidedge.export.export3d import fidelity_3d

        return fidelity_3d(runners, volumes, stage)

    return fidelity_report(runners, volumes, stage, dim)


