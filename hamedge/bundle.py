"""Export bundles: one self-describing directory per exported model. No torch here.

Layout (written by `hamedge export`, read by every runtime backend)::

    model.hamedge/
      spec.json            {"format", "spec": ModelSpec, "graph": GraphInfo, "provenance": {...}}
      model.onnx           fp32 graph, dynamic batch (TensorRT builds fp16 engines from it)
      model.int8.onnx      INT8 Q/DQ for target "tensorrt": symmetric S8S8, zero points 0
      model.int8.cpu.onnx  INT8 Q/DQ for target "cpu": uint8 activations (U8S8), fast in ONNX Runtime on x86
      model.plugin.onnx    optional: the graph with the fused-refinement TensorRT plugin node
      calibration.json     images, method, tensor ranges hash, accuracy deltas (only with --int8)
      ood.json             the input gate's out-of-distribution statistics and threshold (hamedge.ood)
      weights.safetensors  copy of the checkpoint (for the torch backend)
      engines/*.plan       TensorRT plans, each with a record engines/<same name>.json
      checksums            "<sha256>  <relative path>" for every file above

`Bundle.open` verifies every checksum; only files listed in `checksums` belong to the bundle.
`BundleWriter` builds a bundle in a temporary directory beside the target and renames it into
place at the end, so a bundle is either whole or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from hamedge.errors import BundleError, SpecError
from hamedge.fsutil import atomic_write, sha256_file, write_bytes, write_text
from hamedge.spec import ModelSpec

BUNDLE_FORMAT = "hamedge-bundle/1"
SPEC_FILE = "spec.json"
CHECKSUMS_FILE = "checksums"
CALIBRATION_FILE = "calibration.json"
WEIGHTS_FILE = "weights.safetensors"
ENGINES_DIR = "engines"
PLUGIN_GRAPH = "model.plugin.onnx"

# Graph files. One fp32 graph (fp16 and bf16 have no graph of their own: the runtime lowers the
# fp32 graph: TensorRT's fp16 engines, OpenVINO's bf16 inference precision on CPUs with AMX or
# AVX-512 BF16). INT8 graphs come one per *target*, the runtime a graph is laid out for:
# "tensorrt" (symmetric S8S8, what TensorRT needs; correct anywhere) and "cpu" (U8S8, what ONNX
# Runtime runs fast on x86). Bundle.path_for picks the graph for a (precision, target).
FP32_GRAPH = "model.onnx"
INT8_GRAPHS = {"tensorrt": "model.int8.onnx", "cpu": "model.int8.cpu.onnx"}
TARGETS = tuple(INT8_GRAPHS)
# Every precision any backend runs; each backend's own subset is its class attribute.
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
REDUCED_FLOAT = ("fp16", "bf16")  # run from the fp32 graph

OUTPUT_NAMES = ("class_probs", "anomaly_prob", "attention_maps")
# Exported graphs name every node after the classification features "/head/...": the pooling,
# sigmoids, CAM projection and refinement that INT8 graphs keep in floating point.
FLOAT_TAIL_PREFIX = "/head/"
# ONNX opsets the exported graphs are written in. 17 is the highest TensorRT 8.5 (JetPack 5)
# parses, fine for TensorRT 10/11 and ONNX Runtime; torch's TorchScript tracer writes up to 20,
# and below 11 there is no Resize with align_corners for full-resolution heatmaps.
DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 11, 20


@dataclass(frozen=True)
class GraphInfo:
    """What the exported graphs take and give (the same for every precision of one bundle)."""

    input_channels: int  # 1 when the grayscale replication is folded into the first convolution
    input_size: int  # S: the graph takes (B, input_channels, S, S) float32, already preprocessed
    heatmaps: str  # "raw": ReLU CAMs at feature_size; "refined": refined heatmaps at input_size
    feature_size: int  # h = w of the raw maps
    opset: int
    input_name: str = "image"
    output_names: tuple[str, ...] = OUTPUT_NAMES
    dynamic_batch: bool = True

    def __post_init__(self) -> None:
        for name in ("input_channels", "input_size", "feature_size", "opset"):
            value = getattr(self, name)
            lowest = 0 if name == "opset" else 1  # opset 0: a graph described outside a bundle
            if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= 1_000_000:
                raise BundleError(f"graph field {name} must be a whole number from {lowest}, not {value!r}")
        if not isinstance(self.input_name, str) or not isinstance(self.dynamic_batch, bool):
            raise BundleError("graph fields input_name (a string) and dynamic_batch (true/false) are invalid")
        if not all(isinstance(n, str) for n in self.output_names):
            raise BundleError("graph field output_names must be a list of strings")
        if self.input_channels not in (1, 3):
            raise BundleError(f"graph input_channels must be 1 or 3, not {self.input_channels}")
        if self.heatmaps not in ("raw", "refined"):
            raise BundleError(f"graph heatmaps must be 'raw' or 'refined', not {self.heatmaps!r}")

    @property
    def heatmap_size(self) -> int:
        """Side of the `attention_maps` output."""
        return self.input_size if self.heatmaps == "refined" else self.feature_size

    @property
    def folded(self) -> bool:
        return self.input_channels == 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output_names"] = list(self.output_names)
        data["heatmap_size"] = self.heatmap_size
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GraphInfo":
        if not isinstance(data, dict):
            raise BundleError("spec.json: the graph section must be an object")
        data = {k: v for k, v in data.items() if k != "heatmap_size"}
        if "output_names" in data:
            if not isinstance(data["output_names"], list):
                raise BundleError("graph field output_names must be a list of strings")
            data["output_names"] = tuple(data["output_names"])
        try:
            return cls(**data)
        except TypeError as exc:
            raise BundleError(f"spec.json has an invalid graph section: {exc}") from None


@dataclass(frozen=True)
class EngineRecord:
    """Metadata stored beside each TensorRT plan (engines/<name>.json)."""

    plan: str  # file name of the plan inside engines/
    gpu_name: str
    compute_capability: str  # "8.7", "9.0"
    trt_version: str
    precision: str  # fp32 | fp16 | int8
    min_batch: int
    opt_batch: int
    max_batch: int
    onnx_file: str  # graph it was built from (relative to the bundle)
    onnx_sha256: str
    dla_core: int | None = None
    builder: str = "tensorrt"  # hamedge.trt.build; records of any other builder are not run
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineRecord":
        if not isinstance(data, dict):
            raise BundleError("invalid engine record: not an object")
        try:
            return cls(**data)
        except TypeError as exc:
            raise BundleError(f"invalid engine record: {exc}") from None


def _safe_relpath(rel: str) -> str:
    """A checksum path must stay inside the bundle: relative, no '..', posix separators."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise BundleError(f"checksums names a path outside the bundle: {rel!r}")
    return str(p)


def _check_inside(root: Path, rel: str) -> None:
    """A bundle file (or engines/) that is a link resolving outside the bundle is refused: it
    would be read from, and written through, somewhere else."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(root / rel)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise BundleError(f"bundle {root}: {rel} is a link leading outside the bundle ({real})")


def onnx_output_dims(path: str | os.PathLike) -> dict[str, list[int | None]]:
    """Graph output name -> dims (None for a symbolic dim; {} when unreadable), read from an ONNX file's protobuf
    wire format without the onnx package (not in the slim runtime) and without copying weights:
    ModelProto.graph (7) -> GraphProto.output (12) -> ValueInfoProto name (1), type (2) ->
    TypeProto.tensor_type (1) -> shape (2) -> dim (1) -> dim_value (1) | dim_param (2)."""
    import mmap

    def fields(buf, start, end):
        pos = start
        while pos < end:
            key, pos = _varint(buf, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = _varint(buf, pos)
                yield number, wire, value, None
            elif wire == 2:
                size, pos = _varint(buf, pos)
                if pos + size > end:
                    raise ValueError("field runs past its message")
                yield number, wire, pos, pos + size
                pos += size
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            else:
                raise ValueError(f"wire type {wire}")

    def sub(buf, start, end, number):
        return [(s, e) for n, w, s, e in fields(buf, start, end) if n == number and w == 2]

    out: dict[str, list[int | None]] = {}
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            for g0, g1 in sub(buf, 0, len(buf), 7):
                for o0, o1 in sub(buf, g0, g1, 12):
                    name, dims = "", []
                    for n, w, s, e in fields(buf, o0, o1):
                        if n == 1 and w == 2:
                            name = bytes(buf[s:e]).decode("utf-8", "replace")
                        elif n == 2 and w == 2:
                            for t0, t1 in sub(buf, s, e, 1):
                                for h0, h1 in sub(buf, t0, t1, 2):
                                    for d0, d1 in sub(buf, h0, h1, 1):
                                        value = [v for n2, w2, v, _ in fields(buf, d0, d1) if n2 == 1 and w2 == 0]
                                        dims.append(value[0] if value else None)
                    out[name] = dims
    except (OSError, ValueError, IndexError):
        return {}  # not ONNX at all: the backend that opens it says so
    return out


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def parse_checksums(text: str) -> dict[str, str]:
    """sha256sum format ("<64 hex>  <relative path>") -> {path: hex}."""
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise BundleError(f"checksums line {number} is not '<sha256>  <path>': {line[:80]!r}")
        entries[_safe_relpath(rel.lstrip("*"))] = digest.lower()
    return entries


def format_checksums(entries: dict[str, str]) -> str:
    return "".join(f"{digest}  {rel}\n" for rel, digest in sorted(entries.items()))


def _hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root except the checksums file and hidden temp files."""
    entries = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or rel == CHECKSUMS_FILE or any(part.startswith(".") for part in
                                                              PurePosixPath(rel).parts):
            continue
        entries[rel] = sha256_file(path)
    return entries


class Bundle:
    """A verified export bundle. Open with `Bundle.open(path)`."""

    def __init__(self, root: Path, meta: dict[str, Any], files: dict[str, str]) -> None:
        self.root = root
        self._meta = meta
        self.files = files  # relative path -> sha256, as verified
        try:
            self.spec = ModelSpec.from_dict(meta["spec"])
        except (KeyError, SpecError) as exc:
            raise BundleError(f"{root / SPEC_FILE}: invalid model spec: {exc}") from None
        if "graph" not in meta:
            raise BundleError(f"{root / SPEC_FILE} has no graph section")
        self.graph = GraphInfo.from_dict(meta["graph"])
        provenance = meta.get("provenance", {})
        if not isinstance(provenance, dict):
            raise BundleError(f"{root / SPEC_FILE}: the provenance section must be an object")
        self.provenance: dict[str, Any] = dict(provenance)
        self._check_graph_matches_spec()

    def _check_graph_matches_spec(self) -> None:
        spec, graph = self.spec, self.graph
        where = f"{self.root / SPEC_FILE}:"
        if graph.input_size != spec.input_size:
            raise BundleError(f"{where} graph input_size {graph.input_size} differs from the spec's "
                              f"{spec.input_size}")
        if graph.input_channels not in (1, spec.in_channels):
            raise BundleError(f"{where} graph input_channels {graph.input_channels} does not fit a "
                              f"{spec.in_channels}-channel spec")
        if graph.heatmaps == "raw" and graph.feature_size != spec.feature_size:
            raise BundleError(f"{where} graph feature_size {graph.feature_size} differs from the "
                              f"spec's {spec.feature_size}")
        fp32 = FP32_GRAPH
        if fp32 in self.files:
            dims = onnx_output_dims(self.root / fp32)
            classes = dims.get(OUTPUT_NAMES[0])
            if classes is not None and len(classes) == 2 and classes[1] not in (None, spec.num_classes):
                raise BundleError(f"{where} the spec names {spec.num_classes} classes but {fp32} "
                                  f"gives {classes[1]} class probabilities")

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True) -> "Bundle":
        """Open and (by default) verify a bundle; any missing or altered file is a BundleError."""
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"no bundle at {root} (not a directory)")
        sums = root / CHECKSUMS_FILE
        if not sums.is_file():
            raise BundleError(f"{root} is not a hamedge bundle (no {CHECKSUMS_FILE} file)")
        _check_inside(root, CHECKSUMS_FILE)
        try:
            text = sums.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise BundleError(f"{sums} is not a text file of '<sha256>  <path>' lines") from None
        files = parse_checksums(text)
        if SPEC_FILE not in files:
            raise BundleError(f"{sums} does not list {SPEC_FILE}")
        if (root / ENGINES_DIR).exists():
            _check_inside(root, ENGINES_DIR)
        for rel, digest in files.items():
            target = root / rel
            if not target.is_file():
                raise BundleError(f"bundle {root} is incomplete: {rel} is missing")
            _check_inside(root, rel)
            if verify and sha256_file(target) != digest:
                raise BundleError(f"bundle {root}: checksum mismatch for {rel} "
                                  "(file changed or corrupt; re-export the bundle)")
        try:
            meta = json.loads((root / SPEC_FILE).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{root / SPEC_FILE} is not valid JSON: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise BundleError(f"{root / SPEC_FILE}: unsupported bundle format {found!r} "
                              f"(this hamedge reads {BUNDLE_FORMAT})")
        bundle = cls(root, meta, files)
        bundle._check_calibration_key()
        return bundle

    def _check_calibration_key(self) -> None:
        """INT8 ranges belong to the weights they were computed on: refuse a calibration.json
        keyed to another checkpoint than the one the graphs were exported from (stale)."""
        cal = self.calibration
        exported_from = self.provenance.get("checkpoint_sha256")
        if cal is not None and exported_from and cal.get("checkpoint_sha256") != exported_from:
            raise BundleError(f"bundle {self.root}: calibration.json was computed for checkpoint "
                              f"{str(cal.get('checkpoint_sha256'))[:12]}..., the graphs come from "
                              f"{exported_from[:12]}... (stale calibration; re-export with --int8)")

    # -- contents ------------------------------------------------------------------------------
    def has(self, rel: str) -> bool:
        return rel in self.files

    def path_for(self, precision: str = "fp32", target: str = "cpu") -> Path:
        """The ONNX graph to run or build for this precision on this target.

        fp32/fp16/bf16 -> model.onnx; int8 on "tensorrt" -> model.int8.onnx (symmetric S8S8);
        int8 on "cpu" -> model.int8.cpu.onnx (U8S8), or the symmetric graph when the bundle has no
        "cpu" graph (correct, only slower on x86).
        """
        if precision not in PRECISIONS:
            raise BundleError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
        if target not in TARGETS:
            raise BundleError(f"unknown target {target!r}; one of {', '.join(TARGETS)}")
        if precision == "fp32" or precision in REDUCED_FLOAT:
            candidates = [FP32_GRAPH]
        elif target == "cpu":
            candidates = [INT8_GRAPHS["cpu"], INT8_GRAPHS["tensorrt"]]
        else:
            candidates = [INT8_GRAPHS["tensorrt"]]
        for rel in candidates:
            if rel in self.files:
                return self.root / rel
        hint = " (export with --int8)" if precision == "int8" else ""
        raise BundleError(f"bundle {self.root} has no {precision} graph for {target}{hint}")

    @property
    def precisions(self) -> tuple[str, ...]:
        """Precisions this bundle has graphs for (fp16 and bf16 whenever fp32 exists: the runtime
        lowers the fp32 graph)."""
        out = []
        if FP32_GRAPH in self.files:
            out += ["fp32", *REDUCED_FLOAT]
        if any(name in self.files for name in INT8_GRAPHS.values()):
            out.append("int8")
        return tuple(out)

    @property
    def plugin_graph_path(self) -> Path | None:
        return self.root / PLUGIN_GRAPH if PLUGIN_GRAPH in self.files else None

    @property
    def calibration(self) -> dict[str, Any] | None:
        if CALIBRATION_FILE not in self.files:
            return None
        return json.loads((self.root / CALIBRATION_FILE).read_text(encoding="utf-8"))

    def guard_refusal(self, backend: str, precision: str, rel: str | None = None) -> str | None:
        """Why the export's accuracy guard rejected ``precision`` on ``backend`` (for int8: the
        graph ``rel``), or None: passed, or not measured (no guard, bundles from before the
        per-backend checks, a backend the guard could not run at export)."""
        cal = self.calibration or {}
        if precision == "bf16":
            entry, what = cal.get("bf16") or {}, "bf16"
        elif precision == "int8":
            target = next((t for t, f in INT8_GRAPHS.items() if f == rel), None)
            accuracy = (cal.get("accuracy") or {}).get(target) or {}
            entry, what = (accuracy.get("backends") or {}).get(backend) or {}, rel
        else:
            return None
        if entry.get("passed") is not False:
            return None
        why = "; ".join(entry.get("failures") or []) or "outside the accuracy budget"
        return (f"the export's accuracy guard rejected {what} on {backend} ({why}); use another "
                "precision or backend, or re-export with a wider budget")

    @property
    def weights_path(self) -> Path | None:
        return self.root / WEIGHTS_FILE if WEIGHTS_FILE in self.files else None

    @property
    def engines(self) -> list[EngineRecord]:
        """Engine records listed in checksums (engines/*.json), whose plans are listed too."""
        records = []
        for rel in sorted(self.files):
            parts = PurePosixPath(rel).parts
            if len(parts) == 2 and parts[0] == ENGINES_DIR and rel.endswith(".json"):
                data = json.loads((self.root / rel).read_text(encoding="utf-8"))
                record = EngineRecord.from_dict(data)
                if f"{ENGINES_DIR}/{record.plan}" in self.files:
                    records.append(record)
        return records

    def engine_path(self, record: EngineRecord) -> Path:
        return self.root / ENGINES_DIR / record.plan

    # -- adding engines after export (first `infer` on a GPU, or `export --engine`) ---------------
    def add_engine(self, plan: bytes, record: EngineRecord) -> Path:
        """Store a plan and its record, then rewrite checksums (each file written atomically)."""
        name = PurePosixPath(record.plan)
        if len(name.parts) != 1 or not record.plan.endswith(".plan"):
            raise BundleError(f"engine plan name must be a bare '*.plan' file name: {record.plan!r}")
        plan_path = self.root / ENGINES_DIR / record.plan
        plan_rel, json_rel = f"{ENGINES_DIR}/{record.plan}", f"{ENGINES_DIR}/{name.stem}.json"
        if plan_rel in self.files or json_rel in self.files:
            # A rebuild replaces files the checksums vouch for: drop them from the checksums
            # first, so a kill between the writes leaves a bundle that still opens (without it).
            self.files.pop(plan_rel, None)
            self.files.pop(json_rel, None)
            write_text(self.root / CHECKSUMS_FILE, format_checksums(self.files))
        write_bytes(plan_path, plan)
        write_text(self.root / json_rel, json.dumps(record.to_dict(), indent=2, sort_keys=True))
        self.files[plan_rel] = sha256_file(plan_path)
        self.files[json_rel] = sha256_file(self.root / json_rel)
        write_text(self.root / CHECKSUMS_FILE, format_checksums(self.files))
        return plan_path

    def __repr__(self) -> str:
        return f"Bundle({str(self.root)!r}, {self.spec.arch}, {', '.join(self.precisions)})"


def _readable(root: Path) -> None:
    """Temporary files and directories are created private (0600/0700); a finished bundle gets
    the usual permissions under the user's umask, so other users and services can read it."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o755 if path.is_dir() else 0o644) & ~umask)


class BundleWriter:
    """Build a bundle in a temporary directory beside `target`; `commit()` renames it into place.

    Use as a context manager: an exception (or leaving without commit) removes the temporary
    directory, so a half-written bundle never appears at `target`. An existing target is refused
    unless `force`, checked both on entry (fail fast) and at commit.
    """

    def __init__(self, target: str | os.PathLike, force: bool = False) -> None:
        self.target = Path(target)
        self.force = force
        self._check_target()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".partial",
                                         dir=self.target.parent))
        self.committed = False

    def _check_target(self) -> None:
        if self.target.exists() and not self.force:
            raise BundleError(f"{self.target} already exists (use --force to replace it)")
        if self.target.exists() and not self.target.is_dir():
            raise BundleError(f"{self.target} exists and is not a directory")

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()

    def path(self, rel: str) -> Path:
        """Where a file goes inside the (temporary) bundle; parent folders are created."""
        dest = self.tmp / _safe_relpath(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest

    def open(self, rel: str, mode: str = "wb"):
        """atomic_write into the bundle (for writers that stream)."""
        return atomic_write(self.path(rel), mode)

    def write_bytes(self, rel: str, data: bytes) -> Path:
        dest = self.path(rel)
        write_bytes(dest, data)
        return dest

    def write_json(self, rel: str, data: Any) -> Path:
        dest = self.path(rel)
        write_text(dest, json.dumps(data, indent=2, sort_keys=True) + "\n")
        return dest

    def copy_file(self, src: str | os.PathLike, rel: str) -> Path:
        dest = self.path(rel)
        with open(src, "rb") as fin, atomic_write(dest, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        return dest

    def write_spec(self, spec: ModelSpec, graph: GraphInfo, provenance: dict[str, Any]) -> Path:
        return self.write_json(SPEC_FILE, {"format": BUNDLE_FORMAT, "spec": spec.to_dict(),
                                           "graph": graph.to_dict(), "provenance": provenance})

    def add_engine(self, plan: bytes, record: EngineRecord) -> Path:
        stem = PurePosixPath(record.plan).stem
        self.write_json(f"{ENGINES_DIR}/{stem}.json", record.to_dict())
        return self.write_bytes(f"{ENGINES_DIR}/{record.plan}", plan)

    def commit(self) -> Bundle:
        """Write checksums, rename the temporary directory to the target, return the opened bundle."""
        if not (self.tmp / SPEC_FILE).is_file():
            raise BundleError("bundle has no spec.json; write_spec() before commit()")
        write_text(self.tmp / CHECKSUMS_FILE, format_checksums(_hash_tree(self.tmp)))
        _readable(self.tmp)
        Bundle.open(self.tmp, verify=False)  # a bundle that would not open is never put in place
        self._check_target()
        old = None
        if self.target.exists():  # force: move the old bundle aside, swap, then delete it
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".old",
                                        dir=self.target.parent))
            os.replace(self.target, old / "bundle")
        os.replace(self.tmp, self.target)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return Bundle.open(self.target, verify=False)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
