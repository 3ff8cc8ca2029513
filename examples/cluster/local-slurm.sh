#!/usr/bin/env bash
# The Slurm example (sweep.slurm) on a real, single-node Slurm cluster on this machine, installed
# from the distribution's packages — the flow a new user follows, a failed task included:
#
#   sudo apt-get install -y slurmctld slurmd slurm-client munge     # Debian / Ubuntu
#   sudo bash examples/cluster/local-slurm.sh start    # munged, slurmctld and slurmd, one node
#   sudo bash examples/cluster/local-slurm.sh demo     # the flow below, on a tiny sweep
#   sudo bash examples/cluster/local-slurm.sh stop     # stops the three daemons
#
# `start` writes /etc/slurm/slurm.conf for one node (this host, its CPUs and memory; no cgroups,
# no accounting) unless one exists that this script did not write, then starts the daemons as
# root (no systemd needed) and waits for the node to be idle.
#
# `demo` runs, in $WORK (default /tmp/deradiff-slurm-demo), on the tiny Stable Diffusion
# checkpoints of deradiff-sd's tests and the tiny CLIPs of deradiff-tune's (no GPU, no weights to
# download; about a minute on 2 cores with a release build):
#   1. `bash examples/cluster/sweep.slurm` with SHARDS=4: the array job and the merge job after it;
#   2. kills one array task while it runs (scancel), the others finish;
#   3. the merge job runs anyway (afterany) and refuses the partial sweep, listing what is missing;
#      `deradiff status` shows the killed shard as dead and exits with 3;
#   4. re-runs that index alone: `sbatch --array=K examples/cluster/sweep.slurm` (Slurm then reports
#      SLURM_ARRAY_TASK_COUNT=1; the task still computes shard K of 4, resuming its file);
#   5. `deradiff status` (exit 0) and `deradiff merge`;
#   6. the same sweep unsharded, and `cmp` of the merged sweep.jsonl and sweep.csv with its own
#      (on a mismatch: how many rows differ, and the comparison with an unsharded run batched as
#      the shards are, which tells batching from sharding; the exit status is then 1).
# DERADIFF names the binary (default: target/release/deradiff, else deradiff on the PATH).
# This script is not run in CI.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CONF=/etc/slurm/slurm.conf
MARK="# written by deradiff examples/cluster/local-slurm.sh"
NODE=$(hostname -s)

start() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        echo "$CONF exists and was not written by this script: using it as it is"
    else
        local mem
        mem=$(awk '/MemTotal/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)
        cat > "$CONF" <<EOF
$MARK
ClusterName=deradiff-local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=5
NodeName=$NODE CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
        echo "wrote $CONF (node $NODE, $(nproc) CPUs, $mem MB)"
    fi
    mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
    chown munge:munge /run/munge
    [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key; }
    pgrep -x munged >/dev/null || runuser -u munge -- munged
    pgrep -x slurmctld >/dev/null || slurmctld
    pgrep -x slurmd >/dev/null || slurmd
    for _ in $(seq 60); do
        if sinfo -h -N -o '%T' 2>/dev/null | grep -qx idle; then
            sinfo
            return 0
        fi
        sleep 1
    done
    echo "the node did not become idle; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
    sinfo >&2 || true
    return 1
}

stop() {
    # By the pid files the daemons write (slurm.conf above; munged's default), not by name.
    local file
    for file in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
        if [ -s "$file" ]; then
            kill "$(cat "$file")" 2>/dev/null || true
        fi
    done
    echo "stopped slurmd, slurmctld and munged"
}

# Waits until job (or array task) $1 has left the queue.
wait_gone() {
    while squeue -h -j "$1" 2>/dev/null | grep -q .; do sleep 1; done
}

# The number of rows of results file $1 (its lines but the header), 0 while it does not exist.
rows() {
    if [ -f "$1" ]; then echo $(($(wc -l < "$1") - 1)); else echo 0; fi
}

demo() {
    local bin=${DERADIFF:-}
    if [ -z "$bin" ]; then
        if [ -x "$REPO/target/release/deradiff" ]; then bin=$REPO/target/release/deradiff; else bin=$(command -v deradiff); fi
    fi
    export DERADIFF=$bin
    local work=${WORK:-/tmp/deradiff-slurm-demo}
    local fixtures=$REPO/crates/deradiff-sd/tests/fixtures
    rm -rf "$work"
    mkdir -p "$work"
    cd "$work"
    printf 'a red cube\na blue sphere\na green cone\n' > prompts.txt
    # The sweep of sweep.slurm, on tiny models: 3 prompts × 3 seeds × 4 λ = 36 items, 4 shards.
    export SHARDS=4 OUT=$work/results REF=$fixtures/tiny-sd ALIGNED=$fixtures/tiny-aligned-unet
    export PROMPTS=$work/prompts.txt SEEDS=0..3 LAMBDAS=0,0.5,1,1.5
    local clip=$REPO/crates/deradiff-tune/tests/fixtures/clip
    export REWARDS="--clip $clip/clip-gelu --pickscore $clip/clip-quick-gelu" DEVICE="--device cpu"
    export EXTRA="--steps 4 --samples 1"
    # What a CPU-only node needs instead of the example's GPU request.
    local small=(--gres=none --cpus-per-task=1 --mem=1G --time=0:10:00)
    local K=2

    echo "== 1. bash examples/cluster/sweep.slurm ${small[*]}"
    local submitted array merge
    submitted=$(bash "$REPO/examples/cluster/sweep.slurm" "${small[@]}")
    echo "$submitted"
    array=$(echo "$submitted" | sed -n 's/^submitted the array job \([0-9]*\) .*/\1/p')
    merge=$(echo "$submitted" | sed -n 's/.* the merge job \([0-9]*\) .*/\1/p')
    squeue

    echo "== 2. kill task ${array}_$K while it runs"
    local shard_file
    shard_file=$OUT/$(printf 'sweep.shard-%05d-of-%05d.jsonl' "$K" "$SHARDS")
    until [ "$(rows "$shard_file")" -ge 1 ]; do
        if ! squeue -h -j "${array}_$K" | grep -q .; then
            echo "task ${array}_$K ended before it could be killed: make the sweep larger" >&2
            return 1
        fi
        sleep 0.2
    done
    echo "shard $K has $(rows "$shard_file") rows; scancel ${array}_$K"
    scancel "${array}_$K"
    wait_gone "$array"
    echo "shard $K has $(rows "$shard_file") rows after the kill"

    echo "== 3. the merge job ran after the array all the same (afterany): its log"
    wait_gone "$merge"
    cat "logs/deradiff-merge-$merge.out"
    echo "-- deradiff status $OUT"
    local code=0
    "$DERADIFF" status "$OUT" || code=$?
    echo "exit status: $code (3: items missing)"
    [ "$code" = 3 ] || { echo "expected exit status 3" >&2; return 1; }

    echo "== 4. re-run index $K alone: sbatch --array=$K examples/cluster/sweep.slurm"
    local rerun
    rerun=$(sbatch --parsable --wait --array="$K" "${small[@]}" "$REPO/examples/cluster/sweep.slurm")
    rerun=${rerun%%;*}
    cat logs/deradiff-sweep-"${rerun}"_"$K".out

    echo "== 5. deradiff status, deradiff merge"
    "$DERADIFF" status "$OUT"
    echo "exit status: $?"
    "$DERADIFF" merge "$OUT"

    echo "== 6. the same sweep unsharded, compared byte for byte"
    unsharded "$work/whole"
    if cmp "$OUT/sweep.jsonl" "$work/whole/sweep.jsonl" && cmp "$OUT/sweep.csv" "$work/whole/sweep.csv"; then
        echo "the merged sweep.jsonl and sweep.csv are byte-identical to the unsharded run's ($(rows "$OUT/sweep.jsonl") rows)"
        return 0
    fi
    echo "NOT byte-identical: $(diff "$OUT/sweep.jsonl" "$work/whole/sweep.jsonl" | grep -c '^<') of" \
        "$(rows "$OUT/sweep.jsonl") rows differ; the first:"
    { diff "$OUT/sweep.jsonl" "$work/whole/sweep.jsonl" || true; } | head -n 4
    # Each shard here batches one λ per prompt entry (4 λ, 4 shards); the unsharded run batches all
    # four. The same sweep unsharded with one λ per batch separates the cluster flow from batching.
    echo "-- the unsharded run again with --max-lambdas-per-batch 1 (the shards' batches)"
    unsharded "$work/whole-1" --max-lambdas-per-batch 1
    if cmp "$OUT/sweep.jsonl" "$work/whole-1/sweep.jsonl" && cmp "$OUT/sweep.csv" "$work/whole-1/sweep.csv"; then
        echo "byte-identical with the same batches: the rows depend on how λ values are batched" \
            "(the kernels' batch invariance), not on the shards, the kill or the re-run"
    fi
    return 1
}

# The sweep of the demo, unsharded, into folder $1 (more options after it).
unsharded() {
    local out=$1
    shift
    # shellcheck disable=SC2086 # the option lists are word-split on purpose
    "$DERADIFF" sweep --reference "$REF" --aligned "$ALIGNED" --prompts-file "$PROMPTS" --seeds "$SEEDS" \
        --lambdas "$LAMBDAS" $REWARDS $DEVICE $EXTRA "$@" --out "$out" --quiet > "$out.txt" 2>&1
    head -n 1 "$out.txt"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    demo) demo ;;
    *)
        echo "usage: sudo bash $0 start|demo|stop" >&2
        exit 2
        ;;
esac
