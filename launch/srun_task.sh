#!/usr/bin/env bash
# One Slurm task = one rank: map Slurm's task ids to the torch.distributed environment (RANK,
# LOCAL_RANK, WORLD_SIZE; MASTER_ADDR/PORT come from nash.sbatch) and run the entry point, which
# gets Slurm's signals (USR1/TERM: preemption) itself. Started by launch/nash.sbatch:
#
#   srun ... launch/srun_task.sh finetune --config configs/x.yaml key=value
#
# With NASH_LAUNCHER=torchrun it starts one torchrun per node instead (one srun task per node),
# which spawns NASH_PROCS_PER_NODE ranks; torchrun does not pass SIGUSR1 on to its workers, so
# preemption with checkpoint-and-requeue needs the default per-rank mode.
set -uo pipefail

: "${MASTER_ADDR:?set by nash.sbatch}" "${MASTER_PORT:?set by nash.sbatch}"
python=${NASH_PYTHON:-python}
entry=${NASH_ENTRY:-run.py}

if [[ ${NASH_LAUNCHER:-srun} == torchrun ]]; then
  echo "[srun_task] node ${SLURM_NODEID}/${SLURM_NNODES} on $(hostname) pid $$:" \
       "torchrun x ${NASH_PROCS_PER_NODE:?} ranks, restart ${SLURM_RESTART_COUNT:-0}"
  exec "$python" -m torch.distributed.run \
    --nnodes="$SLURM_NNODES" --nproc-per-node="$NASH_PROCS_PER_NODE" \
    --node-rank="$SLURM_NODEID" --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" \
    "$entry" "$@"
fi

export RANK=$SLURM_PROCID
export LOCAL_RANK=$SLURM_LOCALID
export WORLD_SIZE=$SLURM_NTASKS
export LOCAL_WORLD_SIZE=${SLURM_NTASKS_PER_NODE:-${NASH_PROCS_PER_NODE:-1}}
export NODE_RANK=$SLURM_NODEID
# Each rank sees every GPU of its node and picks cuda:LOCAL_RANK (DeepSpeed does).

echo "[srun_task] rank $RANK/$WORLD_SIZE (local $LOCAL_RANK) on ${SLURMD_NODENAME:-?}" \
     "($(hostname)) pid $$, master $MASTER_ADDR:$MASTER_PORT, restart ${SLURM_RESTART_COUNT:-0}"

# Not exec: exit 75 ("preempted, checkpoint saved") must not count as a bad exit, or
# --kill-on-bad-exit kills the ranks still finishing their part of the checkpoint. So the rank's
# exit code goes to rank-<r>.exitcode for nash.sbatch and 75 leaves this task as 0. Slurm
# signals every process of the task; the trap also passes them on (a repeat is harmless).
"$python" "$entry" "$@" &
child=$!
job_dir=${NASH_JOB_LOG_DIR:-}
[[ -n $job_dir ]] && echo "$child" >"$job_dir/rank-$RANK.pid"  # lets tests find the rank
# shellcheck disable=SC2064  # expand $sig and $child now
for sig in USR1 TERM INT; do trap "kill -s $sig $child 2>/dev/null" "$sig"; done
while :; do
  rc=0; wait "$child" || rc=$?
  ((rc > 128)) || break
  kill -0 "$child" 2>/dev/null && continue   # a trapped signal cut wait short
  rc2=0; wait "$child" || rc2=$?             # it ended meanwhile: collect its real status
  ((rc2 != 127)) && rc=$rc2
  break
done
[[ -n $job_dir ]] && echo "$rc" >"$job_dir/rank-$RANK.exitcode"
if ((rc == 75)); then
  echo "[srun_task] rank $RANK exited 75: preempted, checkpoint saved"
  exit 0
fi
((rc > 128)) && echo "[srun_task] rank $RANK (pid $child) was killed by signal $((rc - 128))"
exit "$rc"
