"""The lean inference engine: backends, streaming pipeline, cascade gating, profiling.

Importing this package must never import torch (the torch backend imports it only when
activated), so a Jetson or a CPU box runs ``kidedge infer`` with the base install. The
entry point of ``kidedge infer`` is :func:`kidedge.runtime.command.infer_command`.
"""
