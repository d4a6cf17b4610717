"""The summary CSV of a batch run: one line per scan, with its status, time and volumes."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path

#: Volumes reported per scan (mL), from the volumes record's "classes" and "sides".
VOLUME_COLUMNS = ("kidney_ml", "tumour_ml", "cyst_ml", "left_kidney_ml", "right_kidney_ml")
#: seconds: the scan's total; read_s / segment_s / write_s: each stage's share (the stages
#: of different scans overlap, so a run's wall time is not the sum of these); finished:
#: when the scan left the pipeline (UTC, ISO 8601).
COLUMNS = ("scan", "status", "seconds", "read_s", "segment_s", "write_s", "finished", *VOLUME_COLUMNS,
           "output", "error")
_NO_TIMES = {"seconds": "", "read_s": "", "segment_s": "", "write_s": "", "finished": ""}

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


def volume_columns(volumes: dict | None) -> dict[str, float | str]:
    """The CSV's volume cells from a ``class_volumes_ml`` dict (empty cells when absent)."""
    volumes = volumes or {}
    classes = volumes.get("classes", {}) or {}
    sides = volumes.get("sides", {}) or {}
    out: dict[str, float | str] = {}
    for key in ("kidney_ml", "tumour_ml", "cyst_ml"):
        v = classes.get(key)
        out[key] = round(float(v), 3) if isinstance(v, (int, float)) else ""
    for side in ("left", "right"):
        v = (sides.get(side) or {}).get("kidney_ml")
        out[f"{side}_kidney_ml"] = round(float(v), 3) if isinstance(v, (int, float)) else ""
    return out


def _iso(epoch: float | None) -> str:
    if not epoch:
        return ""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds")


def summary_line(row: dict) -> dict:
    """A finished pipeline row -> its CSV line."""
    failed = bool(row.get("error"))
    seconds = row.get("t_read", 0.0) + row.get("t_segment", 0.0) + row.get("t_write", 0.0)
    volumes = None if failed or not row.get("volumes") else json.loads(row["volumes"])
    return {"scan": row["scan"], "status": FAILED if failed else DONE, "seconds": round(seconds, 3),
            "read_s": round(row.get("t_read", 0.0), 3), "segment_s": round(row.get("t_segment", 0.0), 3),
            "write_s": round(row.get("t_write", 0.0), 3), "finished": _iso(row.get("finished_at")),
            **volume_columns(volumes), "output": "" if failed else row["output"],
            "error": row.get("error") or ""}


def skipped_line(item, record: dict) -> dict:
    """A scan finished by an earlier run."""
    return {"scan": item.scan, "status": SKIPPED, **_NO_TIMES, **volume_columns(record.get("volumes")),
            "output": item.output, "error": ""}


def failed_line(item, error: str) -> dict:
    return {"scan": item.scan, "status": FAILED, **_NO_TIMES, **volume_columns(None),
            "output": "", "error": error}


def write_summary(path: str | Path, lines: list[dict]) -> Path:
    """Write the CSV (sorted by scan) atomically."""
    from kidedge.io.writer import write_text_atomic

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for line in sorted(lines, key=lambda d: d["scan"]):
        writer.writerow(line)
    return write_text_atomic(path, buf.getvalue())
