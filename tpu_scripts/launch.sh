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

  --name NAME        TPU name
  --zone ZONE        its zone
  --phase PHASE      demos | sft | refine | eval | pipeline
  --config CONFIG    config file on the workers, e.g. ~/srit/configs/paper.py:llama2_7b,v4-8
  --workdir DIR      run directory on the workers (on a pod: a shared mount, see setup.sh --bucket)
  --foreground       wait for the run and stream worker 0's output instead of nohup
  --project PROJECT  GCP project
  --dry-run          print the commands, run nothing
  -h, --help         this help
USAGE
}

NAME="" ZONE="" PHASE="" CONFIG="" WORKDIR="" PROJECT="" FOREGROUND=0
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
  command="cd \$HOME/srit && mkdir -p -- \"\$(dirname -- ${workdir})\" && nohup ${job} > $(quote "${WORKDIR}.log") 2>&1 &"
fi
run gcloud compute tpus tpu-vm ssh "${NAME}" --worker=all "${common[@]}" --command="${command}"
