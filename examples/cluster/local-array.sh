#!/usr/bin/env bash
# The job-array flow on one machine: N shard processes started at once (as a scheduler would),
# then merge, status and compare — on the analytic testbed, so it needs no GPU and no weights.
#
#   bash examples/cluster/local-array.sh [N] [OUT]
set -euo pipefail
N=${1:-4}
OUT=${2:-deradiff-out/local-array}
DERADIFF=${DERADIFF:-deradiff}
rm -rf "$OUT"
for k in $(seq 0 $((N - 1))); do
    # What a Slurm array task sees; the loop stands in for the scheduler. The count is given
    # (--shards), the index read from SLURM_ARRAY_TASK_ID.
    SLURM_ARRAY_TASK_ID=$k SLURM_ARRAY_TASK_COUNT=$N \
        $DERADIFF sweep --lambda-range 0:2:9 --prompts 6 --seeds 0..2 --shards "$N" --out "$OUT" --quiet &
done
wait
$DERADIFF status "$OUT"   # exit status 0: every item is done
$DERADIFF merge "$OUT"
# The same sweep unsharded, for comparison: identical rows.
$DERADIFF sweep --lambda-range 0:2:9 --prompts 6 --seeds 0..2 --out "$OUT/unsharded" --quiet
$DERADIFF compare "$OUT/unsharded/sweep.jsonl" "$OUT/sweep.jsonl" --reward true --out "$OUT/compare"
