"""The lean inference engine: backends, streaming pipeline, cascade gating, profiling.

Importing this package never imports torch (the torch backend imports it only when
activated), nor kidedge.train, kidedge.export or kidedge.bench
(``tests/test_layering.py``), so a Jetson or a CPU box runs ``kidedge infer`` with the
base install.

The library call::

    from kidedge.io import load_scan
    from kidedge.io.writer import save_segmentation_planes
    from kidedge.package import ModelPackage
    from kidedge.runtime.engine import Segmenter

    with Segmenter(ModelPackage.load()) as segmenter:          # backends activated once
        scan = load_scan("scan.nii.gz")
        result = segmenter.segment(scan)                        # -> Segmentation
        save_segmentation_planes(result.labels, scan, "scan_seg.nii.gz")
        result.volumes, result.gating, result.profile, result.warnings

Modules:
    engine       ``Segmenter(package, choice=None, batch=None, slab_size, threads)``;
                 ``.segment(scan, gate=True, profiler=None, postprocess=True)`` ->
                 ``Segmentation`` (labels, volumes, gating, profile, warnings).
    command      ``infer_command(...)``: ``kidedge infer``'s jobs, progress and errors.
    pipeline     ``run_stage(scan, backend, stage, sink, profiler, region=None, ...)``:
                 slab reader -> preprocess -> micro-batched inference -> labels -> sink,
                 threads joined by bounded queues; ``iter_slabs``.
    gating       ``CascadeGate``, ``RegionOfInterest``: stage 1's kidney region + margin.
    labels       ``logits_to_labels``: logits of a micro-batch -> uint8 at scan resolution.
    labelmap     ``SparseLabels`` (only the labelled crop of each slice is held).
    profiling    ``Profiler``: stage times, latency percentiles, slices/s, peak RSS, GPU
                 memory and energy (NVML, tegrastats); ``parse_tegrastats_line``.
    report       ``format_summary``, ``write_report_json``.
    overlay      ``write_scan_overlay``, ``write_overlay``, ``pick_slices``: PNG of labels
                 over the CT.
    inputs       ``expand_inputs``, ``plan_outputs``: scans given -> output files.
    backends     ``Backend`` (activate / infer / deactivate, context manager),
                 ``OnnxRuntimeBackend``, ``TensorRTBackend``, ``TorchBackend``;
                 ``registry.select_backend(package, backend, precision)``,
                 ``registry.create_backend(choice, package, stage)``.
"""
