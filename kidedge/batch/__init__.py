"""``kidedge batch``: whole archives of scans through the lean runtime on Ray.

Modules:
    plan       ``find_scans``, ``plan_items``, ``finished_record``: what to do, what is done.
    stages     ``read_stage``, ``SegmentStage``, ``write_stage``: one row (scan) per call,
               no Ray.
    engine     the runtime as the stages use it (one model load, one call per scan).
    summary    the summary CSV.
    pipeline   ``run_batch``: the stages as a Ray Data pipeline (the only module that
               imports Ray; needs ``kidedge[cluster]``).

Nothing here is imported by :mod:`kidedge.runtime`; importing this package does not import
Ray.
"""
