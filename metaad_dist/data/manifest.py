"""manifest.json: what makes a folder of Parquet shards a prepared dataset (docs/method.md section 2).

Layout of a prepared dataset (a local folder or s3://bucket/prefix)::

    manifest.json                                   # written last; without it there is no dataset
    shards-<stamp>-<id>/family=<name>/part-00000.parquet

Each prepare writes its shards under a fresh ``shards-*`` prefix and commits them by writing
the manifest that names that prefix; shard prefixes no manifest names (a killed prepare, a
replaced version) are removed by the next successful prepare into the same destination.

Manifest fields (schema_version 1):
- ``schema_version``, ``format``, ``created``, ``name``
- ``features``: [{name, dtype, column, kind: numeric|onehot|index, category?}] in matrix order
- ``categories``: {column: [values learned from the train files]}; unseen values encode to
  all-zero (onehot) or 0 (index, known values are 1..K)
- ``families``: {name: {rows, train_rows, test_rows, dropped_nonfinite, shards: [indices]}}
- ``normal_families``; ``normalization``: count/mean/std/min/max per feature over the
  training rows of the normal families (see ``scope``)
- ``shard_root``; ``shards``: [{path, family, rows, row_groups, bytes, sha256}]
- ``columns``: the non-feature columns in every shard (row_id, split, raw_label)
- ``has_split``, ``rows``, ``dropped``, ``unseen_categories``, ``source`` (files with sha256,
  and the settings they were read with; never credentials)
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any, Optional

from metaad_dist.data.storage import Location, storage_errors
from metaad_dist.errors import DataError

SCHEMA_VERSION = 1
FORMAT = "metaad-prepared"
MANIFEST_NAME = "manifest.json"
SHARD_PREFIX = "shards-"
ROW_ID = "row_id"
SPLIT = "split"
RAW_LABEL = "raw_label"
FAMILY_DIR = "family="


def dump(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=1, sort_keys=False).encode()


def write_manifest(location: Location, manifest: dict[str, Any]) -> None:
    """The commit point of a prepare: one atomic object write."""
    location.write_bytes_atomic(dump(manifest), MANIFEST_NAME)


def load_manifest(location: Location) -> dict[str, Any]:
    """Read and validate a manifest, or fail in one line saying why this is not a dataset."""
    where = location.uri_of(MANIFEST_NAME)
    if not location.exists(MANIFEST_NAME):
        raise DataError(
            f"{location.uri}: no {MANIFEST_NAME}, so not a prepared dataset; "
            f"run `metaad prepare data=<dataset> output={location.uri}` first"
        )
    try:
        manifest = json.loads(location.read_bytes(MANIFEST_NAME))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{where}: not a metaad manifest (expected format '{FORMAT}')")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(
            f"{where}: schema_version {version!r}, but this metaad reads schema_version {SCHEMA_VERSION}; "
            "re-run `metaad prepare` with this version"
        )
    for key in ("features", "families", "shards", "shard_root", "columns"):
        if key not in manifest:
            raise DataError(f"{where}: missing field '{key}'")
    check_manifest(manifest, where)
    return manifest


def feature_names(manifest: dict[str, Any]) -> list[str]:
    return [f["name"] for f in manifest["features"]]


def family_shards(manifest: dict[str, Any], family: str) -> list[dict[str, Any]]:
    return [manifest["shards"][i] for i in manifest["families"][family]["shards"]]


def check_manifest(manifest: dict[str, Any], where: str) -> None:
    """The manifest must agree with itself before any shard is trusted: feature dtypes, family
    row counts that add up over their shards, shard indices and families that match."""
    names = feature_names(manifest)
    if not names or len(set(names)) != len(names):
        raise DataError(f"{where}: 'features' must list distinct feature names; re-run metaad prepare")
    odd = next((f for f in manifest["features"] if f.get("dtype") != FEATURE_DTYPE), None)
    if odd is not None:
        raise DataError(f"{where}: feature '{odd['name']}' has dtype {odd.get('dtype')!r}, expected "
                        f"'{FEATURE_DTYPE}'; re-run metaad prepare")
    shards = manifest["shards"]
    for family, entry in manifest["families"].items():
        indices = entry.get("shards", [])
        if any(not isinstance(i, int) or not 0 <= i < len(shards) for i in indices):
            raise DataError(f"{where}: family '{family}' names shards that are not in 'shards'; re-run metaad prepare")
        wrong = next((shards[i]["path"] for i in indices if shards[i].get("family") != family), None)
        if wrong is not None:
            raise DataError(f"{where}: shard {wrong} is listed under family '{family}' but belongs to another; "
                            "re-run metaad prepare")
        total = sum(int(shards[i]["rows"]) for i in indices)
        if total != int(entry["rows"]):
            raise DataError(f"{where}: family '{family}' has {entry['rows']} rows but its shards hold {total}; "
                            "re-run metaad prepare")


FEATURE_DTYPE = "float32"
_NON_FEATURE_TYPES = {ROW_ID: "int64", SPLIT: "string", RAW_LABEL: "string"}
HASH_CHUNK = 8 << 20  # bytes per read when a shard is hashed as a stream

_verified: set[tuple[str, str]] = set()  # (shard uri, sha256) this process has checked
_verified_lock = threading.Lock()


def forget_verified() -> None:
    """Forget which shards this process has hashed (benchmarks measure a first open with it)."""
    with _verified_lock:
        _verified.clear()


@dataclass(frozen=True)
class ShardCheck:
    """What every process checks when it first opens a shard: bytes, sha256 (once per process and
    shard), columns with their types in order, and rows. Plain values: it travels in sampler plans."""

    dataset: str  # the dataset's uri
    shard_root: str
    columns: tuple[tuple[str, str], ...]  # (name, Arrow type) the shards must hold, in order
    shards: tuple[tuple[str, str, int, int, str], ...]  # (path, family, rows, bytes, sha256)
    verify: bool = True  # storage.verify_checksums

    @classmethod
    def from_manifest(cls, uri: str, manifest: dict[str, Any], verify: bool = True) -> "ShardCheck":
        extra = [(c, _NON_FEATURE_TYPES.get(c, "string")) for c in manifest["columns"]]
        features = [(f["name"], _arrow_name(f["dtype"])) for f in manifest["features"]]
        shards = tuple((s["path"], s["family"], int(s["rows"]), int(s["bytes"]), str(s.get("sha256", "")))
                       for s in manifest["shards"])
        return cls(uri, manifest["shard_root"], tuple(extra + features), shards, bool(verify))

    def where(self, shard: int) -> str:
        """The shard's uri, for one-line errors."""
        return "/".join([self.dataset.rstrip("/"), self.shard_root, self.shards[shard][0]])

    def fail(self, shard: int, problem: str) -> DataError:
        path, family = self.shards[shard][:2]
        return DataError(f"{self.dataset}: shard {path} of family '{family}' {problem}; the dataset is damaged "
                         f"or was changed after prepare, re-run metaad prepare")

    def check_size(self, shard: int, size: Optional[int]) -> None:
        if size is None:
            raise self.fail(shard, "is missing")
        if size != self.shards[shard][3]:
            raise self.fail(shard, f"has {size} bytes, not {self.shards[shard][3]} as {MANIFEST_NAME} says")

    def needs_hash(self, shard: int) -> bool:
        if not self.verify:
            return False
        with _verified_lock:
            return (self.where(shard), self.shards[shard][4]) not in _verified

    def check_hash(self, shard: int, digest: str) -> None:
        expected = self.shards[shard][4]
        if digest != expected:
            raise self.fail(shard, f"does not match its sha256 in {MANIFEST_NAME} (sha256 {digest[:12]}..., "
                                   f"expected {expected[:12]}...)")
        with _verified_lock:
            _verified.add((self.where(shard), expected))

    def hash_stream(self, shard: int, stream) -> None:
        """Hash a shard from an open input stream in bounded chunks (memory stays HASH_CHUNK)."""
        digest = hashlib.sha256()
        while True:
            chunk = stream.read(HASH_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
        self.check_hash(shard, digest.hexdigest())

    def check_footer(self, shard: int, metadata) -> None:
        """The footer's schema and row count against the manifest (columns, order, types, rows)."""
        schema = metadata.schema.to_arrow_schema()
        found = [(f.name, _type_name(f.type)) for f in schema]
        expected = list(self.columns)
        if found != expected:
            names, wanted = [n for n, _ in found], [n for n, _ in expected]
            extra = [n for n in names if n not in wanted]
            missing = [n for n in wanted if n not in names]
            if extra:
                problem = f"has columns {MANIFEST_NAME} does not list (e.g. '{extra[0]}', {len(extra)} in all)"
            elif missing:
                problem = f"lacks columns {MANIFEST_NAME} lists (e.g. '{missing[0]}', {len(missing)} in all)"
            elif names != wanted:
                i = next(k for k, (a, b) in enumerate(zip(names, wanted)) if a != b)
                problem = f"holds column '{names[i]}' where {MANIFEST_NAME} puts '{wanted[i]}' (column order differs)"
            else:
                (n, t), (_, e) = next((a, b) for a, b in zip(found, expected) if a != b)
                problem = f"stores column '{n}' as {t}, not {e} as {MANIFEST_NAME} says"
            raise self.fail(shard, problem)
        if metadata.num_rows != self.shards[shard][2]:
            raise self.fail(shard, f"holds {metadata.num_rows} rows, not {self.shards[shard][2]} as {MANIFEST_NAME} says")


def _type_name(t) -> str:
    import pyarrow as pa

    return "string" if pa.types.is_string(t) or pa.types.is_large_string(t) else str(t)


def _arrow_name(dtype: str) -> str:
    """Arrow's name of a manifest dtype ("float32" is Arrow's "float"), as footers report it."""
    import pyarrow as pa

    return _type_name(pa.type_for_alias(dtype))


def verify_shards(location: Location, manifest: dict[str, Any]) -> None:
    """Re-hash every shard and compare with the manifest (reads the whole dataset once)."""
    check = ShardCheck.from_manifest(location.uri, manifest, verify=True)
    for i, shard in enumerate(manifest["shards"]):
        path = location.path(manifest["shard_root"], shard["path"])
        with storage_errors(check.where(i)):
            check.check_size(i, location.fs.get_file_info(path).size)
            with location.fs.open_input_stream(path) as stream:
                check.hash_stream(i, stream)
