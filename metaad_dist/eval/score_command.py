"""`metaad score`: a trained run scores a file, a folder or an s3:// prefix (eval/scoring.py in
this process for one small file, eval/score_ray.py on Ray Data otherwise); parts are committed
with the completion marker last."""
from __future__ import annotations

import posixpath

from metaad_dist.data.ray_instance import check_worker_niceness
from metaad_dist.data.storage import open_location
from metaad_dist.errors import ConfigError
from metaad_dist.eval.score_ray import score_with_ray
from metaad_dist.eval.scoring import FILE_OUTPUT_SUFFIXES, ScoreOutput, list_inputs, score_in_process


def score_command(cfg) -> None:
    from metaad_dist.train.artifacts import load_run
    from metaad_dist.train.commands import run_location
    from metaad_dist.train.setup import configure_torch

    if not cfg.input or not cfg.output:
        raise ConfigError("metaad score needs input=<table, folder or s3:// prefix> and output=<folder or file.parquet>")
    output = str(cfg.output).rstrip("/")
    one_file = output.endswith(".parquet")
    if not one_file and output.lower().endswith(FILE_OUTPUT_SUFFIXES):
        raise ConfigError(f"output={cfg.output}; expected a .parquet file name or a folder (scores are written as Parquet)")
    for key in ("concurrency", "batch_rows", "tasks_per_actor", "in_process_max_bytes", "object_store_bytes"):
        zero_allowed = key in ("concurrency", "object_store_bytes")  # 0: Ray's own default
        if getattr(cfg.score, key) < (0 if zero_allowed else 1):
            expected = "an integer >= 0 (0: Ray's default)" if zero_allowed else "a positive integer"
            raise ConfigError(f"score.{key}={getattr(cfg.score, key)}; expected {expected}")
    check_worker_niceness(cfg.trainer)
    run = run_location(cfg)
    trained, payload = load_run(run)
    source, files = list_inputs(cfg.input, cfg.storage)
    device = configure_torch(cfg.trainer)
    info = {"run": run.uri, "input": source.uri, "threshold": float(payload["threshold"])}
    if one_file:
        if len(files) != 1:
            raise ConfigError(f"input={cfg.input} holds {len(files)} files; output={cfg.output} is one file: name a folder")
        parent, name = posixpath.split(output)
        rows, flagged = score_in_process(files[0], source.fs, open_location(parent or ".", cfg.storage), name,
                                         trained, payload, cfg.score.batch_rows, device)
        where = cfg.output
    else:
        out = ScoreOutput(output, cfg.storage)
        out.begin()
        if len(files) == 1 and files[0].size <= cfg.score.in_process_max_bytes:
            written = [out.part_name("000000")]
            score_in_process(files[0], source.fs, out.location, written[0], trained, payload,
                             cfg.score.batch_rows, device)
            info["engine"] = "in-process"
        else:
            written = score_with_ray(cfg, source, files, out, trained, payload)
            info["engine"] = "ray-data"
        marker = out.commit(info, written)
        rows, flagged, where = marker["rows"], marker["flagged"], f"{out.location.uri} ({len(marker['files'])} files)"
    if not cfg.quiet:
        print(f"scored {rows} rows -> {where} ({flagged} flagged)")
