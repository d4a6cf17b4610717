"""Export: a trained run (checkpoints + run.json) -> the model package the runtime runs.

Small modules, one job each:

* :mod:`~kidedge.export.onnx_export`   torch -> fp32 ONNX, checker, parity vs PyTorch
* :mod:`~kidedge.export.fp16`          fp32 ONNX -> fp16 ONNX (float32 inputs/outputs kept)
* :mod:`~kidedge.export.held_out`      CT volumes to test and calibrate on (phantoms)
* :mod:`~kidedge.export.stage_inputs`  CT slices -> a stage's network input (via kidedge.preprocess)
* :mod:`~kidedge.export.calibration`   int8 calibration data (kidney/tumour slices oversampled)
* :mod:`~kidedge.export.quantize`      static int8 PTQ: CPU (ORT x86) and TensorRT (symmetric QDQ)
* :mod:`~kidedge.export.tensorrt_build` TensorRT 10 engines (needs TensorRT and a GPU)
* :mod:`~kidedge.export.fidelity`      Dice of each precision against fp32
* :mod:`~kidedge.export.package_writer` ``export_run``: all of the above -> package, atomically
* :mod:`~kidedge.export.verify`        ``verify_package``: hashes and parity of a package
* :mod:`~kidedge.export.from_package`  a 2D package standing in for its training run (export, fine-tune)

torch and onnx are imported here and in ``train`` only, never by the runtime.
"""
