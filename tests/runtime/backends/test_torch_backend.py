"""The exported ONNX model on onnxruntime agrees with the torch reference backend."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("kidedge.train.models")

from kidedge.package import ModelPackage, write_manifest  # noqa: E402
from kidedge.preprocess import PreprocessSpec, preprocess_slices  # noqa: E402
from kidedge.runtime.backends.registry import select_backend  # noqa: E402
from kidedge.runtime.engine import Segmenter  # noqa: E402
from kidedge.runtime.profiling import Profiler  # noqa: E402

from ..synthetic import kits_affine, make_ct, write_nifti  # noqa: E402

KWARGS = {"in_channels": 1, "classes": 4, "decoder_channels": [16, 16, 8, 8]}


@pytest.fixture(scope="module")
def real_package(tmp_path_factory):
    from kidedge.train.models import build_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("pkg_torch")
    model = build_model("squeezenet_unet", **KWARGS).eval()
    torch.save(model.state_dict(), d / "segment.pt")
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and fast
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(1, 1, 64, 64),), str(d / "segment.fp32.onnx"),
                          input_names=["image"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    spec = PreprocessSpec(hu_window=(-100.0, 400.0), normalisation="zscore", mean=50.0, std=120.0, pad_multiple=16)
    write_manifest(d, {
        "name": "squeezenet-random", "architecture": "squeezenet_unet", "dimensionality": "2d",
        "classes": {"0": "background", "1": "kidney", "2": "tumour", "3": "cyst"},
        "stages": [{"name": "segment", "role": "segment", "arch": "squeezenet_unet", "model_kwargs": KWARGS,
                    "preprocess": spec.to_dict(),
                    "input": {"name": "image", "channels": 1, "height": 64, "width": 64},
                    "output": {"name": "logits", "activation": "softmax", "labels": [0, 1, 2, 3]},
                    "files": {"fp32": {"path": "segment.fp32.onnx"}, "torch": {"path": "segment.pt"}}}]})
    return d, model, spec


def _segment(pkg, backend, scan):
    from kidedge.io import load_scan

    choice = select_backend(pkg, backend)
    with Segmenter(pkg, choice, batch=4) as seg, Profiler(gpu=False, power=False) as prof:
        labels = seg.segment(load_scan(scan), profiler=prof, postprocess=False).labels.to_dense()
        assert seg.describe().startswith(backend)
    return labels


def test_onnxruntime_labels_equal_torch_reference_up_to_ties(tmp_path, real_package):
    d, model, spec = real_package
    hu, _ = make_ct(shape=(12, 64, 64), kidney_slices=(3, 9), seed=1)
    scan = write_nifti(tmp_path / "s.nii.gz", hu, kits_affine())
    pkg = ModelPackage.load(d)
    ort_labels = _segment(pkg, "onnxruntime", scan)
    ref_labels = _segment(pkg, "torch", scan)
    with torch.inference_mode():
        logits = model(torch.from_numpy(preprocess_slices(hu, spec))).numpy()
    top2 = np.sort(logits, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 1e-3 * np.abs(logits).max()
    assert decided.mean() > 0.99
    assert len(np.unique(ref_labels)) > 1  # a random net still gives several classes
    np.testing.assert_array_equal(ort_labels[decided], ref_labels[decided])
    np.testing.assert_array_equal(ref_labels[decided], logits.argmax(1).astype(np.uint8)[decided])
