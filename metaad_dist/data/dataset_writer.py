"""Committing a prepared dataset: shards under a fresh prefix, then the manifest that names them.

Atomicity: shards go under a fresh `shards-<stamp>-<id>/` prefix that no manifest names yet;
the manifest, written last in one atomic write, commits them. On any error the new prefix is
deleted; a killed prepare leaves only an unnamed prefix, which the next successful prepare into
the same destination removes. A folder without a manifest is not a dataset.
"""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from metaad_dist.config import SourceConfig, StorageConfig
from metaad_dist.data.batch_encoder import BatchEncoder, RunningStats
from metaad_dist.data.manifest import FORMAT, MANIFEST_NAME, RAW_LABEL, ROW_ID, SCHEMA_VERSION, SHARD_PREFIX, SPLIT, write_manifest
from metaad_dist.data.shard_writer import ShardSetWriter
from metaad_dist.data.storage import Location, abort_stale_uploads, open_location
from metaad_dist.errors import ConfigError, DataError


def open_destination(output: str, src: SourceConfig, storage: StorageConfig) -> Location:
    dest = open_location(output, storage)
    if dest.exists(MANIFEST_NAME) and not src.overwrite:
        raise DataError(
            f"{dest.uri}: already holds a prepared dataset ({MANIFEST_NAME}); "
            "set data.source.overwrite=true to replace it"
        )
    return dest


def write_dataset(data, dest, batch_encoder: BatchEncoder, encoded, source_info) -> dict[str, Any]:
    """Write EncodedBatches (in row order) as shards, then the manifest that commits them."""
    src = data.source
    started = time.perf_counter()
    encoder, has_split, keep_raw_label = batch_encoder.encoder, batch_encoder.has_split, batch_encoder.keep_raw_label
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    shard_root = f"{SHARD_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"
    writer = ShardSetWriter(dest.child(shard_root), batch_encoder.schema, src)
    normal = batch_encoder.normal
    stats = RunningStats(len(encoder.feature_names))
    counts: dict[str, dict[str, int]] = {}
    unseen_total: dict[str, int] = {}
    next_row = 0
    try:
        for part in encoded:
            table = part.table.set_column(0, ROW_ID, pc.add(part.table.column(0), pa.scalar(next_row, pa.int64())))
            next_row += part.rows
            for column, k in part.unseen.items():
                unseen_total[column] = unseen_total.get(column, 0) + k
            stats.merge(part.stats)
            bounds = np.concatenate([[0], np.cumsum(part.kept)])
            for i, family in enumerate(part.families):
                entry = counts.setdefault(family, {"seen": 0, "rows": 0, "train_rows": 0, "test_rows": 0, "dropped_nonfinite": 0})
                entry["seen"] += int(part.seen[i])
                entry["rows"] += int(part.kept[i])
                entry[f"{part.split}_rows"] += int(part.kept[i])
                entry["dropped_nonfinite"] += int(part.seen[i] - part.kept[i])
                if part.kept[i]:
                    writer.append(family, table.slice(int(bounds[i]), int(part.kept[i])))
        if not counts:
            raise DataError(f"dataset '{data.name}': the inputs hold no data rows")
        for family, entry in sorted(counts.items()):
            if entry["rows"] == 0:
                raise DataError(
                    f"family '{family}': all {entry['seen']} rows have NaN, empty or infinite features and were "
                    "dropped (data.source.nonfinite_policy=drop); nothing is left to write"
                )
        missing_normal = sorted(normal - set(counts))
        if missing_normal:
            raise ConfigError(
                f"data.normal: family '{missing_normal[0]}' is not in the prepared data; families are {sorted(counts)}"
            )
        shards = writer.finish()
        manifest = _manifest(data, encoder, counts, shards, shard_root, has_split, keep_raw_label, stats,
                             unseen_total, next_row, source_info)
        manifest["prepare_seconds"] = round(time.perf_counter() - started, 3)
        write_manifest(dest, manifest)
    except BaseException:
        writer.abort()
        raise
    _remove_stale(dest, shard_root)
    return manifest


def _manifest(data, encoder, counts, shards, shard_root, has_split, keep_raw_label, stats, unseen, total_rows,
              source_info) -> dict[str, Any]:
    src = data.source
    by_family: dict[str, list[int]] = {}
    for i, shard in enumerate(shards):
        by_family.setdefault(shard["family"], []).append(i)
    families = {
        family: {
            "rows": entry["rows"],
            "train_rows": entry["train_rows"],
            "test_rows": entry["test_rows"],
            "dropped_nonfinite": entry["dropped_nonfinite"],
            "shards": by_family.get(family, []),
        }
        for family, entry in sorted(counts.items())
    }
    normal = [str(f) for f in data.normal]
    scope = (
        "rows with split=train of the normal families"
        if has_split
        else "all rows of the normal families (the source has no official split; training refits its scaler on "
        "its seed's training normal rows)"
    )
    columns = [ROW_ID] + ([SPLIT] if has_split else []) + ([RAW_LABEL] if keep_raw_label else [])
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "name": data.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "features": encoder.features,
        "categorical_encoding": encoder.encoding,
        "categories": encoder.categories,
        "columns": columns,
        "family_partition": "family",
        "has_split": has_split,
        "rows": sum(entry["rows"] for entry in counts.values()),
        "source_rows": total_rows,
        "dropped": {"nonfinite": sum(entry["dropped_nonfinite"] for entry in counts.values())},
        "unseen_categories": unseen,
        "families": families,
        "normal_families": [f for f in normal if f in families],
        "normalization": {"scope": scope, **stats.to_json()},
        "row_group_size": src.row_group_size,
        "rows_per_shard": src.rows_per_shard,
        "compression": src.compression,
        "shard_root": shard_root,
        "shards": shards,
        "source": source_info,
    }


def _remove_stale(dest: Location, keep: str) -> None:
    """Shard prefixes no manifest names (killed or replaced prepares) and stray temporary manifests.

    On S3 also aborts the unfinished multipart uploads a killed prepare left under them.
    """
    for name in dest.list_children():
        if (name.startswith(SHARD_PREFIX) and name != keep) or name.startswith(MANIFEST_NAME + ".tmp-"):
            dest.delete(name)
    if dest.is_s3:
        abort_stale_uploads(dest, keep)
