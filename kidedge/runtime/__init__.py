"""The lean inference engine: backends, streaming pipeline, cascade gating, profiling.

Importing this package never imports torch (the torch backend imports it only when
activated), so a Jetson or a CPU box runs ``kidedge infer`` with the base install.

Modules:
    command      ``infer_command(scans, output=None, model=None, backend="auto",
                 precision="auto", batch=None, profile=None, overlay=None, gate=True)``:
                 ``kidedge infer``, returns the exit code.
    engine       ``Segmenter(package, choice, batch, slab_size, threads)``: backends
                 activated once; ``.segment_sparse(scan, profiler, gate)`` -> labels;
                 ``.segment(...)`` the same as a dense uint8 volume.
    pipeline     ``run_stage(scan, backend, stage, sink, profiler, region=None, ...)``:
                 slab reader -> preprocess -> micro-batched inference -> labels -> sink,
                 threads joined by bounded queues; ``iter_slabs``.
    gating       ``CascadeGate``, ``RegionOfInterest``: stage 1's kidney region + margin.
    labels       ``logits_to_labels``: logits of a micro-batch -> uint8 at scan resolution.
    labelmap     ``SparseLabels`` (only the labelled crop of each slice is held),
                 ``save_sparse_segmentation`` (the NIfTI written plane by plane).
    profiling    ``Profiler``: stage times, latency percentiles, slices/s, peak RSS, GPU
                 memory and energy (NVML, tegrastats); ``parse_tegrastats_line``.
    report       ``format_summary``, ``write_report_json``.
    overlay      ``write_overlay``, ``pick_slices``: PNG of labels over the CT.
    inputs       ``expand_inputs``, ``plan_outputs``: scans given -> output files.
    backends     ``Backend`` (activate / infer / deactivate, context manager),
                 ``OnnxRuntimeBackend``, ``TensorRTBackend``, ``TorchBackend``;
                 ``registry.select_backend(package, backend, precision)``,
                 ``registry.create_backend(choice, package, stage)``.
"""
