#!/usr/bin/env bash
# Score a day of flow records (a folder or s3:// prefix of CSV / Parquet files) as a Ray Job.
#
#   RAY_ADDRESS=http://head:8265 jobs/score_folder.sh s3://my-bucket/runs unsw-seed0 \
#       s3://my-bucket/flows/2026-12-03/ s3://my-bucket/scores/2026-12-03/ [more overrides]
#
# Inside the job `metaad score` finds the cluster (Ray sets RAY_ADDRESS for the entrypoint) and runs
# Ray Data there: score.concurrency actors (0: one per cluster CPU), each holding the model once,
# stream the input in score.batch_rows batches and write one Parquet part per write task; the
# output folder is complete once its _SUCCESS.json exists (written last; it lists the parts).
# Credentials come from the nodes' own AWS chain; nothing secret is sent with the job.
set -euo pipefail
root=${1:?storage root (s3://bucket/runs)}; run=${2:?run name}; input=${3:?input folder or prefix}
output=${4:?output folder or prefix}; shift 4
exec python "$(dirname "$0")/submit.py" score --follow -- \
    storage=s3 "storage.root=$root" "run=$run" "input=$input" "output=$output" \
    score.concurrency=0 score.batch_rows=65536 "$@"
