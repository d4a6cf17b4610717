"""The parts of a package manifest's stage, typed: :class:`Stage` with its
:class:`StageInput`, :class:`StageOutput`, :class:`Roi` and :class:`FileEntry` (the JSON
layout is in :mod:`kidedge.package.manifest`). Each is frozen, built by ``from_dict``
(one-line :class:`KidedgeError` naming the manifest) and written back by ``to_dict``;
keys a part does not interpret are kept in its ``extra``, so a manifest round-trips
unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import PurePosixPath
from types import MappingProxyType

from kidedge.errors import KidedgeError
from kidedge.package.plan_key import PlanKey
from kidedge.preprocess import PreprocessSpec
from kidedge.regions import ROI_LABELS

#: Precisions a stage may carry as single files (TensorRT plans live under "tensorrt").
PRECISIONS = ("fp32", "fp16", "int8-cpu", "int8-trt", "torch")
ROLES = ("localise", "segment")
ACTIVATIONS = ("softmax", "sigmoid")
STAGE_KEYS = ("name", "role", "preprocess", "input", "output", "files")
#: The runtime's defaults for a cascade ROI that leaves them out (kidney, tumour, cyst; 10 mm).
DEFAULT_ROI_LABELS = ROI_LABELS
DEFAULT_ROI_MARGIN_MM = 10.0
#: The reference logits' tolerance when a manifest does not state one.
DEFAULT_REFERENCE_TOLERANCE = 1e-3


def frozen(d: Mapping | None) -> Mapping:
    return MappingProxyType(dict(d or {}))


def plain(value):
    """JSON-ready copy: mapping proxies -> dicts, tuples -> lists."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def safe_relative(rel: str, where: str) -> PurePosixPath:
    """A manifest path must stay inside the package (no absolute paths, no '..')."""
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or rel.strip() == "" or "\\" in rel:
        raise KidedgeError(f"{where}: file path {rel!r} in the manifest leaves the package")
    return p


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One file of the package.

    Attributes:
        path: relative to the package root (checked to stay inside it).
        sha256: hex digest; the runtime refuses a file that does not match.
        bytes: size, when recorded.
        companions: files that travel with this one (a plan's ``timing_cache``).
        extra: every other recorded fact, as written (tolerances, build settings, ...).
    """

    path: str
    sha256: str
    bytes: int | None = None
    companions: Mapping[str, FileEntry] = dataclasses.field(default_factory=dict)
    extra: Mapping[str, object] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: object, label: str, source: str) -> FileEntry:
        if not isinstance(d, Mapping) or not isinstance(d.get("path"), str):
            raise KidedgeError(f"{source}: file {label} needs a path")
        safe_relative(d["path"], source)
        sha = d.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64:
            raise KidedgeError(f"{source}: file {label} ({d['path']}) has no sha256")
        companions = {k: cls.from_dict(v, f"{label}/{k}", source) for k, v in d.items()
                      if isinstance(v, Mapping) and "path" in v}
        extra = {k: v for k, v in d.items() if k not in ("path", "sha256", "bytes") and k not in companions}
        return cls(d["path"], sha, d.get("bytes"), frozen(companions), frozen(extra))

    def to_dict(self) -> dict:
        d = {"path": self.path, **plain(self.extra), "sha256": self.sha256}
        if self.bytes is not None:
            d["bytes"] = self.bytes
        d.update({k: v.to_dict() for k, v in self.companions.items()})
        return d

    def walk(self, label: str) -> Iterator[tuple[str, FileEntry]]:
        """(label, entry) of this file and its companions."""
        yield label, self
        for key, entry in self.companions.items():
            yield from entry.walk(f"{label}/{key}")


@dataclasses.dataclass(frozen=True)
class StageInput:
    """What a stage's network takes.

    Attributes:
        name: the ONNX input's name.
        channels: input channels (slice context stacked as channels).
        height, width: a fixed input size, or None where the network takes any size.
        depth: 3D stages' block depth.
        dtype, layout: as recorded (``"float32"``, ``"NCHW"``).
        buckets: fixed padded (height, width) sizes the stage runs at (TensorRT shape
            buckets); empty when the manifest lists none.
    """

    name: str
    channels: int
    height: int | None = None
    width: int | None = None
    depth: int | None = None
    dtype: str | None = None
    layout: str | None = None
    buckets: tuple[tuple[int, int], ...] = ()
    extra: Mapping[str, object] = dataclasses.field(default_factory=dict)

    FIELDS = ("name", "channels", "height", "width", "depth", "dtype", "layout", "buckets")

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """(height, width) when the network takes one size only, else None."""
        return (self.height, self.width) if self.height is not None and self.width is not None else None

    @classmethod
    def from_dict(cls, d: object, where: str) -> StageInput:
        if not isinstance(d, Mapping) or not isinstance(d.get("channels"), int) or "name" not in d:
            raise KidedgeError(f"{where} input needs name and integer channels")
        try:
            buckets = tuple((int(h), int(w)) for h, w in d.get("buckets") or ())
        except (TypeError, ValueError):
            raise KidedgeError(f"{where} input buckets must be a list of [height, width]") from None
        if any(h < 1 or w < 1 for h, w in buckets):
            raise KidedgeError(f"{where} input buckets must be positive sizes")
        dims = [d.get(k) for k in ("height", "width", "depth")]
        if any(v is not None and (not isinstance(v, int) or v < 1) for v in dims):
            raise KidedgeError(f"{where} input height, width and depth must be positive integers or null")
        return cls(str(d["name"]), d["channels"], *dims, d.get("dtype"), d.get("layout"), buckets,
                   frozen({k: v for k, v in d.items() if k not in cls.FIELDS}))

    def to_dict(self) -> dict:
        d = {"name": self.name, "channels": self.channels, "height": self.height, "width": self.width}
        for key in ("depth", "dtype", "layout"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.buckets:
            d["buckets"] = [list(b) for b in self.buckets]
        return {**d, **plain(self.extra)}


@dataclasses.dataclass(frozen=True)
class StageOutput:
    """How a stage's logits become labels.

    Attributes:
        name: the ONNX output's name.
        activation: ``"softmax"`` (arg-max channel) or ``"sigmoid"`` (each channel > 0.5).
        labels: the label value each channel stands for.
        regions: the ground-truth label sets each channel was trained on, when recorded.
        through_plane_sigma_mm: a 2D softmax stage's class probabilities averaged over
            neighbouring slices with a Gaussian of this sigma before the arg-max
            (:mod:`kidedge.runtime.through_plane`); 0 (the default): each slice alone.
    """

    activation: str
    labels: tuple[int, ...]
    name: str = "logits"
    regions: tuple[tuple[int, ...], ...] | None = None
    extra: Mapping[str, object] = dataclasses.field(default_factory=dict)
    through_plane_sigma_mm: float = 0.0

    FIELDS = ("name", "activation", "labels", "regions", "through_plane_sigma_mm")

    @classmethod
    def from_dict(cls, d: object, where: str) -> StageOutput:
        if not isinstance(d, Mapping) or d.get("activation") not in ACTIVATIONS or not isinstance(d.get("labels"), list):
            raise KidedgeError(f"{where} output needs activation in {ACTIVATIONS} and a labels list")
        regions = d.get("regions")
        sigma = d.get("through_plane_sigma_mm", 0.0)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma < 1000:
            raise KidedgeError(f"{where} output.through_plane_sigma_mm must be a number of mm >= 0, got {sigma!r}")
        if sigma and d["activation"] != "softmax":
            raise KidedgeError(f"{where} output.through_plane_sigma_mm needs a softmax output")
        return cls(d["activation"], tuple(int(v) for v in d["labels"]), str(d.get("name", "logits")),
                   None if regions is None else tuple(tuple(int(v) for v in r) for r in regions),
                   frozen({k: v for k, v in d.items() if k not in cls.FIELDS}), float(sigma))

    def to_dict(self) -> dict:
        d = {"name": self.name, "activation": self.activation, "labels": list(self.labels)}
        if self.regions is not None:
            d["regions"] = [list(r) for r in self.regions]
        if self.through_plane_sigma_mm:
            d["through_plane_sigma_mm"] = self.through_plane_sigma_mm
        return {**d, **plain(self.extra)}


@dataclasses.dataclass(frozen=True)
class Roi:
    """A cascade stage's region of interest: where ``source_stage`` found ``labels``,
    grown by ``margin_mm`` (:func:`kidedge.regions.grow_box`)."""

    source_stage: str
    labels: tuple[int, ...] = DEFAULT_ROI_LABELS
    margin_mm: float = DEFAULT_ROI_MARGIN_MM
    extra: Mapping[str, object] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: object, where: str) -> Roi:
        if not isinstance(d, Mapping) or not isinstance(d.get("source_stage"), str):
            raise KidedgeError(f"{where} roi must name another stage as source_stage")
        return cls(d["source_stage"], tuple(int(v) for v in d.get("labels", DEFAULT_ROI_LABELS)),
                   float(d.get("margin_mm", DEFAULT_ROI_MARGIN_MM)),
                   frozen({k: v for k, v in d.items() if k not in ("source_stage", "labels", "margin_mm")}))

    def to_dict(self) -> dict:
        return {"source_stage": self.source_stage, "labels": list(self.labels), "margin_mm": self.margin_mm,
                **plain(self.extra)}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One network of the package (a cascade has a localiser and a segmenter).

    Attributes:
        files: single-file precisions present (keys of :data:`PRECISIONS`).
        plans: TensorRT plans by key text; :attr:`plan_keys` has them parsed.
        reference: fp32 input and logits for ``kidedge export --verify``, when present.
        parity, fidelity, metrics: export's and training's records, as written (None
            when absent).
        extra: everything else recorded for the stage.
    """

    name: str
    role: str
    preprocess: PreprocessSpec
    input: StageInput
    output: StageOutput
    files: Mapping[str, FileEntry]
    plans: Mapping[str, FileEntry] = dataclasses.field(default_factory=dict)
    arch: str | None = None
    model_kwargs: Mapping[str, object] = dataclasses.field(default_factory=dict)
    roi: Roi | None = None
    reference: FileEntry | None = None
    parity: Mapping[str, object] | None = None
    fidelity: Mapping[str, object] | None = None
    metrics: Mapping[str, object] | None = None
    extra: Mapping[str, object] = dataclasses.field(default_factory=dict)

    FIELDS = ("name", "role", "arch", "model_kwargs", "preprocess", "input", "output", "roi", "files", "reference")
    RECORDS = ("parity", "fidelity", "metrics")

    @property
    def precisions(self) -> list[str]:
        """Single-file precisions, in :data:`PRECISIONS` order (not TensorRT)."""
        return [p for p in PRECISIONS if p in self.files]

    @property
    def plan_keys(self) -> dict[str, PlanKey]:
        """TensorRT plan key text -> parsed key."""
        return {k: PlanKey.parse(k) for k in self.plans}

    @property
    def reference_tolerance(self) -> float:
        value = self.reference.extra.get("max_abs_tolerance") if self.reference else None
        return DEFAULT_REFERENCE_TOLERANCE if value is None else float(value)

    @classmethod
    def from_dict(cls, d: object, index: int, source: str) -> Stage:
        if not isinstance(d, Mapping):
            raise KidedgeError(f"{source}: stage {index} is not an object")
        missing = [k for k in STAGE_KEYS if k not in d]
        if missing:
            raise KidedgeError(f"{source}: stage {d.get('name', index)!r} is missing {', '.join(missing)}")
        name = d["name"]
        if not isinstance(name, str) or not name:
            raise KidedgeError(f"{source}: stage {index} has an empty or duplicate name {name!r}")
        where = f"{source}: stage {name!r}"
        if d["role"] not in ROLES:
            raise KidedgeError(f"{where} role must be one of {ROLES}, got {d['role']!r}")
        try:
            spec = PreprocessSpec.from_dict(d["preprocess"])
        except (ValueError, TypeError, AttributeError) as exc:
            raise KidedgeError(f"{where} has a bad preprocessing spec: {exc}") from None
        raw_files = d["files"]
        if not isinstance(raw_files, Mapping):
            raise KidedgeError(f"{where} files must be an object")
        unknown = set(raw_files) - set(PRECISIONS) - {"tensorrt"}
        if unknown:
            raise KidedgeError(f"{where} has unknown precisions {sorted(unknown)}")
        files = {p: FileEntry.from_dict(e, f"{name}/{p}", source) for p, e in raw_files.items() if p != "tensorrt"}
        plans = {}
        for key, entry in (raw_files.get("tensorrt") or {}).items():
            if PlanKey.parse(key) is None:
                raise KidedgeError(f"{where} TensorRT plan key {key!r} is not "
                                   "trt{version}-{gpu}-sm{cc}-{precision}-{onnx sha256[:12]}")
            plans[key] = FileEntry.from_dict(entry, f"{name}/tensorrt/{key}", source)
        ref = d.get("reference")
        return cls(
            name=name, role=d["role"], preprocess=spec,
            input=StageInput.from_dict(d["input"], where), output=StageOutput.from_dict(d["output"], where),
            files=frozen(files), plans=frozen(plans), arch=d.get("arch"),
            model_kwargs=frozen(d.get("model_kwargs")),
            roi=None if d.get("roi") is None else Roi.from_dict(d["roi"], where),
            reference=None if ref is None else FileEntry.from_dict(ref, f"{name}/reference", source),
            **{k: None if d.get(k) is None else frozen(d[k]) for k in cls.RECORDS},
            extra=frozen({k: v for k, v in d.items() if k not in cls.FIELDS + cls.RECORDS}))

    def to_dict(self) -> dict:
        files = {p: e.to_dict() for p, e in self.files.items()}
        if self.plans:
            files["tensorrt"] = {k: e.to_dict() for k, e in self.plans.items()}
        d = {"name": self.name, "role": self.role}
        if self.arch is not None:
            d["arch"] = self.arch
        d["model_kwargs"] = plain(self.model_kwargs)
        d.update(preprocess=self.preprocess.to_dict(), input=self.input.to_dict(), output=self.output.to_dict())
        if self.roi is not None:
            d["roi"] = self.roi.to_dict()
        d["files"] = files
        if self.reference is not None:
            d["reference"] = self.reference.to_dict()
        d.update({k: plain(getattr(self, k)) for k in self.RECORDS if getattr(self, k) is not None})
        return {**d, **plain(self.extra)}

    def file_entries(self) -> Iterator[tuple[str, FileEntry]]:
        """(label, entry) of every file of the stage; labels ``stage/precision[/...]``."""
        for p, e in self.files.items():
            yield from e.walk(f"{self.name}/{p}")
        for key, e in self.plans.items():
            yield from e.walk(f"{self.name}/tensorrt/{key}")
        if self.reference is not None:
            yield from self.reference.walk(f"{self.name}/reference")
