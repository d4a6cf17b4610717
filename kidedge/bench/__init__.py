"""``kidedge bench``: kidedge's runtime against the baselines users would otherwise run.

Same model package, same scans, one run: every variant (the read-only floor, the papers'
way, MONAI's SliceInferer, kidedge per backend / precision / gating) runs on every scan in
a fresh child process (:mod:`.measure`), interleaved and repeated, and the report
(:mod:`.report`) gives medians, ratios, per-stage times, peak RSS and Dice.

Modules: :mod:`.run` (``run_bench``), :mod:`.variants` (what runs), :mod:`.scans`
(phantoms on real KiTS19 label geometry), :mod:`.baselines` (torch and MONAI, torch
imported only inside them), :mod:`.kidedge_variant` (``kidedge infer``'s per-scan path),
:mod:`.measure` (child processes), :mod:`.summary` (medians, ratios, targets),
:mod:`.report` (JSON, Markdown, PNG); :mod:`.package_eval` (``kidedge evaluate
--package``) and :mod:`.untrained_package` (random-weight packages for tests). The
benchmark may import torch, kidedge.train and kidedge.export (the runtime never imports
this package); importing this package itself imports nothing, so the benchmark's child
processes start lean.
"""
