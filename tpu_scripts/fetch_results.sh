#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Copy a run's results (tables, charts, metrics, logs; optionally the exported model) from worker 0.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/fetch_results.sh --name NAME --zone ZONE --workdir DIR [--out LOCAL_DIR] [options]

  --name NAME        TPU name
  --zone ZONE        its zone
  --workdir DIR      the run directory on the workers, or gs://BUCKET/RUN (copied from the bucket)
  --out LOCAL_DIR    where to put the results here (default: ./results/NAME)
  --with-model       also copy exported models (*/export), which are large
  --project PROJECT  GCP project
  --dry-run          print the commands, run nothing
  -h, --help         this help
USAGE
}

NAME="" ZONE="" WORKDIR="" OUT="" PROJECT="" WITH_MODEL=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --with-model) WITH_MODEL=1; shift ;;
    --project) PROJECT="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
need name "${NAME}"; need zone "${ZONE}"; need workdir "${WORKDIR}"
OUT="${OUT:-results/${NAME}}"
common=(--zone="${ZONE}")
[[ -n "${PROJECT}" ]] && common+=(--project="${PROJECT}")

if [[ "${WORKDIR}" == gs://* ]]; then
  pattern='(^|.*/)(checkpoints|tensorboard)/.*'
  [[ "${WITH_MODEL}" == 0 ]] && pattern='(^|.*/)(checkpoints|tensorboard|export)/.*'
  run mkdir -p "${OUT}"
  run gcloud storage rsync --recursive --exclude="${pattern}" "${WORKDIR}" "${OUT}"
  exit 0
fi
exclude="--exclude=*/checkpoints/* --exclude=*/tensorboard/*"
[[ "${WITH_MODEL}" == 0 ]] && exclude+=" --exclude=*/export/*"
run gcloud compute tpus tpu-vm ssh "${NAME}" --worker=0 "${common[@]}" \
  --command="tar -czf /tmp/srit_results.tgz ${exclude} -C $(quote "${WORKDIR}") ."
run mkdir -p "${OUT}"
run gcloud compute tpus tpu-vm scp "${NAME}:/tmp/srit_results.tgz" "${OUT}/results.tgz" --worker=0 "${common[@]}"
run tar -xzf "${OUT}/results.tgz" -C "${OUT}"
