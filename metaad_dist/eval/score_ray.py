"""`metaad score` on Ray Data: read a folder or prefix in parallel, score on an actor pool, write parts.

read_csv / read_parquet (one read task per file, blocks streamed) -> map_batches(_Scorer) on
score.concurrency actors, each holding the model once (fetched from the object store, not
re-read from storage), scoring a batch and writing it as one part file under this job's part
names; the driver gathers the names of the parts written (one row per batch). The
streaming executor keeps a bounded number of blocks in flight, so memory does not grow with the
input. The caller (score_command.score_command) commits exactly those parts with the marker.

Why the actors write, not `write_parquet`: Ray Data does not fuse a task-pool write into an
actor-pool map, so every scored block made a second trip through the object store to a write
task that needed a CPU of its own beside the actors (on 2 CPUs one write ran at a time and the
actors idled behind it, benchmarks/README.md). A part a failed or retried batch left behind is
not in the gathered list, so the commit deletes it instead of counting its rows twice.

Runs on the local Ray instance (127.0.0.1) or, with RAY_ADDRESS set or inside a Ray Job, on the
cluster. A failed batch surfaces as one line: the inputs it came from (or, for a read error,
all inputs) are re-read here without the model to name the first bad file and row.
"""
from __future__ import annotations

import contextlib
import math
import os
import posixpath
import sys
import uuid
from dataclasses import dataclass
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from metaad_dist.data.parallel_read import user_error_behind
from metaad_dist.data.storage import storage_errors
from metaad_dist.errors import ConfigError, DataError, UserError
from metaad_dist.eval.scoring import PATH_COLUMN, first_error, read_types, score_table


# Ray Data 2.60 reads Parquet footers (ListFiles) on a pool of FooterReader actors it starts for
# every read_parquet call, RAY_DATA_PARQUET_FOOTER_NUM_ACTORS of them (default 32) whatever the
# number of files, each one a new worker process. One actor reads a batch of
# RAY_DATA_PARQUET_FOOTER_BATCH_SIZE (10) files at a time, so more actors than batches only boot
# processes nobody uses: on 2 CPUs those boots held up the first read by seconds and took CPU
# from the scoring actors (benchmarks/README.md, session 22).
FOOTER_ACTORS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
FILES_PER_FOOTER_BATCH = 10
MAX_FOOTER_ACTORS = 32


@contextlib.contextmanager
def footer_readers(files: int):
    """While Ray Data plans a read of `files` Parquet files, size its footer-reader pool to
    them (one actor per footer batch, at most Ray's default); a value the user set wins."""
    if FOOTER_ACTORS_ENV in os.environ:
        if not os.environ[FOOTER_ACTORS_ENV].strip().isdigit() or int(os.environ[FOOTER_ACTORS_ENV]) < 1:
            raise ConfigError(f"{FOOTER_ACTORS_ENV}={os.environ[FOOTER_ACTORS_ENV]!r} in the environment; "
                              "expected a positive integer (or unset: one per 10 Parquet files)")
        yield
        return
    os.environ[FOOTER_ACTORS_ENV] = str(max(1, min(MAX_FOOTER_ACTORS, math.ceil(files / FILES_PER_FOOTER_BATCH))))
    try:
        yield
    finally:
        os.environ.pop(FOOTER_ACTORS_ENV, None)


class _BatchError(DataError):
    """A DataError raised in a scoring actor, with the input paths of its batch (for the driver)."""

    def __init__(self, message: str, paths: list[str]):
        super().__init__(message, paths)
        self.message, self.paths = message, paths

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class _PartSink:
    """Where the scoring actors write: the output folder on a filesystem they can use, and the
    job's part-name prefix (ScoreOutput.part_name)."""

    fs: pafs.FileSystem
    folder: str
    uri: str
    prefix: str


class _Scorer:
    """One per actor: the model is fetched once, then every batch is scored with it and written
    as one part file (the sink's prefix + this actor's id + a counter) into the sink's folder."""

    def __init__(self, model_ref: list, threshold: float, encoder: Optional[dict], device: str, torch_threads: int,
                 sink: _PartSink):
        import ray
        import torch

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.trained = ray.get(model_ref[0])
        self.threshold, self.encoder, self.device = threshold, encoder, torch.device(device)
        self.sink, self.prefix = sink, f"{sink.prefix}{uuid.uuid4().hex[:12]}-"
        self.parts = 0
        self.warned: set[str] = set()

    def __call__(self, batch: pa.Table) -> pa.Table:
        scored = self.score(batch)
        name = f"{self.prefix}{self.parts:06d}.parquet"
        self.parts += 1
        with storage_errors(f"{self.sink.uri.rstrip('/')}/{name}", writing=True):
            pq.write_table(scored, posixpath.join(self.sink.folder, name), filesystem=self.sink.fs)
        return pa.table({"part": [name]})  # ScoreOutput.commit counts rows and flags from the file

    def score(self, batch: pa.Table) -> pa.Table:
        paths = sorted(pc.unique(batch.column(PATH_COLUMN)).to_pylist()) if PATH_COLUMN in batch.column_names else []
        table = batch.drop_columns([PATH_COLUMN]) if paths else batch
        where = ", ".join(paths) or "input"
        try:
            scored, unseen = score_table(table, self.trained, self.threshold, where, self.encoder, self.device)
        except DataError as exc:
            raise _BatchError(str(exc), paths) from None
        for column, rows in unseen.items():
            if column not in self.warned:  # once per actor, not once per batch
                self.warned.add(column)
                print(f"warning: {where}: column '{column}' has a category unseen in training in {rows} of "
                      f"{table.num_rows} rows of a batch (encoded as unknown; later batches not reported)",
                      file=sys.stderr)
        return scored


def score_with_ray(cfg, source, files, out, trained, payload) -> list[str]:
    """Score `files` (under the Location `source`) into the ScoreOutput `out` with Ray Data;
    returns the names of the part files written (for out.commit)."""
    import ray
    import ray.data

    from metaad_dist.data.ray_instance import ensure_ray, ray_storage, worker_env

    started = ensure_ray()
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = not cfg.quiet
        # The context is per process: set the cap for this job only, so a later dataset in the
        # same driver (a test, a benchmark, a second score call) is not limited by it.
        ctx.execution_options.resource_limits = ray.data.ExecutionResources(
            object_store_memory=float(cfg.score.object_store_bytes) if cfg.score.object_store_bytes > 0 else None)
        in_fs, out_fs = ray_storage(source)[1], ray_storage(out.location)[1]
        encoder = payload.get("encoder")
        parts = []
        csv = [f.path for f in files if f.kind == "csv"]
        if csv:
            parts.append(ray.data.read_csv(
                csv, filesystem=in_fs, include_paths=True,
                read_options=pacsv.ReadOptions(use_threads=False),
                convert_options=pacsv.ConvertOptions(column_types=read_types(trained, encoder)),
            ))
        parquet = [f.path for f in files if f.kind == "parquet"]
        if parquet:
            with footer_readers(len(parquet)):  # the pool size is read when the read is planned
                parts.append(ray.data.read_parquet(parquet, filesystem=in_fs, include_paths=True, file_extensions=None))
        ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        cpus = float(cfg.score.cpus_per_actor)
        actors = cfg.score.concurrency or max(1, int(ray.cluster_resources().get("CPU", 1)))
        device = str(_device(cfg))
        sink = _PartSink(out_fs, out.location.base, out.location.uri, out.part_name("").removesuffix(".parquet"))
        ds = ds.map_batches(
            _Scorer,
            fn_constructor_args=([ray.put(trained)], float(payload["threshold"]), encoder, device,
                                 int(cfg.trainer.torch_threads), sink),
            batch_format="pyarrow",
            batch_size=cfg.score.batch_rows,
            compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=cfg.score.tasks_per_actor),
            num_cpus=cpus,
            num_gpus=1 if device.startswith("cuda") else None,
            runtime_env={"env_vars": worker_env(cfg.trainer)},
        )
        if not out.location.is_s3:
            out.location.fs.create_dir(out.location.base, recursive=True)
        try:
            return [row["part"] for row in ds.take_all()]  # one row per batch: the parts to commit
        except Exception as exc:  # noqa: BLE001 - any failure of the job becomes one line below
            raise _one_line_failure(exc, files, source.fs, trained, encoder, cfg.score.batch_rows) from None
    finally:
        if started:
            ray.shutdown()


def _device(cfg):
    from metaad_dist.train.setup import resolve_device

    return resolve_device(cfg.trainer.device)


def _one_line_failure(exc, files, fs, trained, encoder, batch_rows) -> UserError:
    cause = user_error_behind(exc)
    named = [f for f in files if cause is not None and f.path in getattr(cause, "paths", ())]
    found = first_error(named or files, fs, trained, encoder, batch_rows)
    if found is not None:
        return found
    if cause is not None:
        return type(cause)(str(cause))
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return UserError(f"scoring failed: {lines[-1] if lines else type(exc).__name__}")
