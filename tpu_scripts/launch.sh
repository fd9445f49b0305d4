#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Run one srit-jax phase (or the whole pipeline) on every worker at once, as one jax.distributed job.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/launch.sh --name NAME --zone ZONE --phase PHASE --config CONFIG --workdir DIR [-- FLAGS...]

Starts `srit-jax PHASE --config=CONFIG --workdir=DIR --distributed FLAGS...` on all workers
(each process finds the others through the TPU metadata); output goes to DIR.log on each
worker, run in the background with nohup so that a dropped ssh session does not stop it.
Rerunning the same command resumes the phase from its last checkpoint.

On a spot or preemptible TPU the phase saves the step it reached when the termination notice
comes and exits with status 75. --retry N waits for that (it implies --foreground): when the
phase exits 75, or the TPU is no longer READY (preempted, repairing), it waits until the TPU is
READY again — a queued resource brings a spot TPU back; a plain spot VM must be recreated
(create.sh, setup.sh) — and runs the phase again, which resumes; at most N times.

  --name NAME        TPU name
  --zone ZONE        its zone
  --phase PHASE      demos | sft | refine | eval | pipeline
  --config CONFIG    config file on the workers, e.g. ~/srit/configs/paper.py:llama2_7b,v4-8
  --workdir DIR      run directory on the workers; on a pod gs://BUCKET/RUN (see setup.sh --bucket),
                     the log then in ~/srit/logs/
  --foreground       wait for the run and stream worker 0's output instead of nohup
  --retry N          after a preemption, wait for the TPU and run the phase again, up to N times
  --wait-minutes M   how long each retry waits for the TPU to be READY (default 120)
  --project PROJECT  GCP project
  --dry-run          print the commands, run nothing
  -h, --help         this help
USAGE
}

NAME="" ZONE="" PHASE="" CONFIG="" WORKDIR="" PROJECT="" FOREGROUND=0 RETRY=0 WAIT_MINUTES=120
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --phase) PHASE="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --foreground) FOREGROUND=1; shift ;;
    --retry) RETRY="$2"; FOREGROUND=1; shift 2 ;;
    --wait-minutes) WAIT_MINUTES="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
need name "${NAME}"; need zone "${ZONE}"; need phase "${PHASE}"; need config "${CONFIG}"; need workdir "${WORKDIR}"
case "${PHASE}" in
  demos|sft|refine|eval|pipeline) ;;
  *) die "--phase must be demos, sft, refine, eval or pipeline, not ${PHASE}" ;;
esac
[[ "${RETRY}" =~ ^[0-9]+$ ]] || die "--retry must be a whole number, not ${RETRY}"
[[ "${WAIT_MINUTES}" =~ ^[0-9]+$ ]] || die "--wait-minutes must be a whole number, not ${WAIT_MINUTES}"
common=(--zone="${ZONE}")
[[ -n "${PROJECT}" ]] && common+=(--project="${PROJECT}")

# Every user value is one quoted word of the remote command.
workdir="$(quote "${WORKDIR}")"
job="\$HOME/srit/venv/bin/srit-jax ${PHASE} --config=$(quote "${CONFIG}") --workdir=${workdir} --distributed"
for flag in "${EXTRA[@]}"; do
  job+=" $(quote "${flag}")"
done
if [[ "${FOREGROUND}" == 1 ]]; then
  command="cd \$HOME/srit && ${job}"
else
  if [[ "${WORKDIR}" == gs://* ]]; then  # no local folder to make; the log stays on the worker
    log_name="${WORKDIR#gs://}"
    command="cd \$HOME/srit && mkdir -p logs && nohup ${job} > logs/$(quote "${log_name//\//_}.log") 2>&1 &"
  else
    command="cd \$HOME/srit && mkdir -p -- \"\$(dirname -- ${workdir})\" && nohup ${job} > $(quote "${WORKDIR}.log") 2>&1 &"
  fi
fi
PREEMPTED=75  # srit-jax's exit status after saving for a preemption notice

tpu_state() {
  gcloud compute tpus tpu-vm describe "${NAME}" "${common[@]}" --format='value(state)' 2>/dev/null || echo UNKNOWN
}

# wait_until_ready: poll the TPU's state once a minute until READY, for at most --wait-minutes.
wait_until_ready() {
  local waited=0 state
  while state="$(tpu_state)"; [[ "${state}" != READY ]]; do
    (( waited < WAIT_MINUTES )) || die "${NAME} is still ${state} after ${WAIT_MINUTES} minutes"
    echo "waiting for ${NAME} to be READY (now ${state}, ${waited} min)" >&2
    sleep 60
    waited=$((waited + 1))
  done
}

attempt=0
while true; do
  status=0
  run gcloud compute tpus tpu-vm ssh "${NAME}" --worker=all "${common[@]}" --command="${command}" || status=$?
  [[ "${status}" == 0 ]] && exit 0
  # A phase that saved for a preemption, or a TPU taken away under it, is retried; other failures are not.
  if (( attempt >= RETRY )) || { [[ "${status}" != "${PREEMPTED}" ]] && [[ "$(tpu_state)" == READY ]]; }; then
    exit "${status}"
  fi
  attempt=$((attempt + 1))
  echo "${PHASE} stopped (status ${status}): preempted; retry ${attempt} of ${RETRY} once ${NAME} is READY" >&2
  wait_until_ready
done
