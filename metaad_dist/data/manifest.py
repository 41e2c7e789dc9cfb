"""manifest.json: what makes a folder of Parquet shards a prepared dataset (METHOD.md section 2).

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
from typing import Any

from metaad_dist.data.storage import Location
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
    return manifest


def feature_names(manifest: dict[str, Any]) -> list[str]:
    return [f["name"] for f in manifest["features"]]


def family_shards(manifest: dict[str, Any], family: str) -> list[dict[str, Any]]:
    return [manifest["shards"][i] for i in manifest["families"][family]["shards"]]


def verify_shards(location: Location, manifest: dict[str, Any]) -> None:
    """Re-hash every shard and compare with the manifest (reads the whole dataset once)."""
    for shard in manifest["shards"]:
        data = location.read_bytes(manifest["shard_root"], shard["path"])
        if len(data) != shard["bytes"] or hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise DataError(
                f"{location.uri_of(manifest['shard_root'], shard['path'])}: checksum mismatch with {MANIFEST_NAME}"
            )
