"""The manifest of a model package, typed: parsed and validated once, when it is loaded.

``manifest.json`` (``format_version`` 1)::

    {
      "format": "kidedge.package", "format_version": 1,
      "name": str, "architecture": str, "dimensionality": "2d" | "3d",
      "classes": {"0": "background", "1": "kidney", "2": "tumour", "3": "cyst"},
      "input_layout": "NCHW" | "NCDHW",
      "stages": [
        {"name": str, "role": "localise" | "segment", "arch": str, "model_kwargs": {...},
         "preprocess": PreprocessSpec.to_dict(),
         "input": {"name": "image", "channels": int, "height": int|null, "width": int|null,
                   "depth": int (3d only), "dtype": "float32", "layout": "NCHW",
                   "buckets": [[h, w], ...] (optional: the fixed padded sizes it runs at)},
         "output": {"name": "logits", "activation": "softmax"|"sigmoid", "labels": [...],
                    "regions": [[...], ...]},
         "roi": {"source_stage": str, "labels": [...], "margin_mm": float,
                 "context": "scan" (optional: trained seeing the scan around its box;
                 absent: the window floor)}   (cascade stage 2),
         "files": {"fp32": FILE, "fp16": FILE, "int8-cpu": FILE, "int8-trt": FILE,
                   "torch": FILE, "tensorrt": {PLAN KEY: FILE + {"timing_cache": FILE}}},
         "reference": FILE + {"max_abs_tolerance": float} (fp32 input and logits, for --verify),
         "parity": {...}, "fidelity": {...}, "metrics": {...}}
      ],
      "provenance": {...}, "export_report": {...}
    }

with ``FILE = {"path": path relative to the package, "sha256": hex, "bytes": int, ...}``
and TensorRT plan keys as :mod:`kidedge.package.plan_key` writes them.

Each part is a frozen dataclass (:class:`Manifest` here; :class:`Stage`,
:class:`StageInput`, :class:`StageOutput`, :class:`Roi`, :class:`FileEntry` in
:mod:`kidedge.package.stage`) built by ``from_dict``, which raises a one-line
:class:`KidedgeError` naming the manifest; ``to_dict`` gives the JSON back (keys it does
not interpret are kept, so a manifest round-trips unchanged).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

from kidedge.errors import KidedgeError
from kidedge.package.stage import FileEntry, Stage, frozen, plain

FORMAT = "kidedge.package"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DIMENSIONALITIES = ("2d", "3d")
REQUIRED_KEYS = ("format", "format_version", "name", "architecture", "dimensionality", "classes", "stages")


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The whole manifest. Build it with :meth:`from_dict` (validates) or :meth:`load`."""

    name: str
    architecture: str
    dimensionality: str
    classes: Mapping[int, str]
    stages: tuple[Stage, ...]
    input_layout: str | None = None
    provenance: Mapping[str, object] = dataclasses.field(default_factory=dict)
    export_report: Mapping[str, object] = dataclasses.field(default_factory=dict)
    files: Mapping[str, FileEntry] = dataclasses.field(default_factory=dict)
    extra: Mapping[str, object] = dataclasses.field(default_factory=dict)

    FIELDS = ("format", "format_version", "name", "architecture", "dimensionality", "classes", "input_layout",
              "stages", "provenance", "export_report", "files")

    @classmethod
    def from_dict(cls, d: object, source: str = MANIFEST_NAME) -> Manifest:
        """Parse and validate; a one-line :class:`KidedgeError` naming ``source``."""
        if not isinstance(d, Mapping):
            raise KidedgeError(f"{source}: manifest is not a JSON object")
        if d.get("format") != FORMAT:
            raise KidedgeError(f"{source}: not a kidedge model package (format is {d.get('format')!r}, expected {FORMAT!r})")
        missing = [k for k in REQUIRED_KEYS if k not in d]
        if missing:
            raise KidedgeError(f"{source}: manifest is missing {', '.join(missing)}")
        if d["format_version"] != FORMAT_VERSION:
            raise KidedgeError(f"{source}: unknown format_version {d['format_version']!r} (this kidedge reads {FORMAT_VERSION})")
        if d["dimensionality"] not in DIMENSIONALITIES:
            raise KidedgeError(f"{source}: dimensionality must be one of {DIMENSIONALITIES}, got {d['dimensionality']!r}")
        classes = d["classes"]
        if not isinstance(classes, Mapping) or not classes or not all(str(k).isdigit() for k in classes):
            raise KidedgeError(f"{source}: classes must be a non-empty object of label -> name")
        raw_stages = d["stages"]
        if not isinstance(raw_stages, list) or not raw_stages:
            raise KidedgeError(f"{source}: stages must be a non-empty list")
        stages = tuple(Stage.from_dict(s, i, source) for i, s in enumerate(raw_stages))
        names = [s.name for s in stages]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise KidedgeError(f"{source}: stage {i} has an empty or duplicate name {n!r}")
        for s in stages:
            if s.roi is not None and (s.roi.source_stage not in names or s.roi.source_stage == s.name):
                raise KidedgeError(f"{source}: stage {s.name!r} roi must name another stage as source_stage")
            if s.output.through_plane_sigma_mm and d["dimensionality"] != "2d":
                raise KidedgeError(f"{source}: stage {s.name!r} through_plane_sigma_mm is for 2D stages (a 3D "
                                   "network already sees its neighbours)")
        files = d.get("files") or {}
        return cls(
            name=d["name"], architecture=d["architecture"], dimensionality=d["dimensionality"],
            classes=frozen({int(k): v for k, v in classes.items()}), stages=stages,
            input_layout=d.get("input_layout"), provenance=frozen(d.get("provenance")),
            export_report=frozen(d.get("export_report")),
            files=frozen({k: FileEntry.from_dict(v, f"package/{k}", source) for k, v in files.items()}),
            extra=frozen({k: v for k, v in d.items() if k not in cls.FIELDS}))

    def to_dict(self) -> dict:
        """The manifest as JSON (what :meth:`from_dict` read, unknown keys included)."""
        d = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name,
             "architecture": self.architecture, "dimensionality": self.dimensionality,
             "classes": {str(k): v for k, v in self.classes.items()}}
        if self.input_layout is not None:
            d["input_layout"] = self.input_layout
        d["stages"] = [s.to_dict() for s in self.stages]
        for key in ("provenance", "export_report"):
            if getattr(self, key):
                d[key] = plain(getattr(self, key))
        if self.files:
            d["files"] = {k: e.to_dict() for k, e in self.files.items()}
        return {**d, **plain(self.extra)}

    def replace(self, **changes) -> Manifest:
        return dataclasses.replace(self, **changes)

    @property
    def is_cascade(self) -> bool:
        return len(self.stages) > 1

    def stage(self, name: str | int, source: str = "package") -> Stage:
        """A stage by name (or by index)."""
        if isinstance(name, int):
            if not -len(self.stages) <= name < len(self.stages):
                raise KidedgeError(f"{source}: package has no stage {name}")
            return self.stages[name]
        for s in self.stages:
            if s.name == name:
                return s
        raise KidedgeError(f"{source}: package has no stage {name!r} (has {[s.name for s in self.stages]})")

    def file_entries(self) -> Iterator[tuple[str, FileEntry]]:
        """(label, entry) of every file the manifest lists; labels ``stage/precision[/...]``."""
        for stage in self.stages:
            yield from stage.file_entries()
        for key, entry in self.files.items():
            yield from entry.walk(f"package/{key}")
