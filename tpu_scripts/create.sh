#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Create a Cloud TPU VM or pod slice for srit_jax.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/create.sh --name NAME --zone ZONE --accelerator TYPE [options]

Creates a TPU VM (v4-8, v5litepod-8, ...) or a pod slice (v4-32, v5litepod-16, ...).

  --name NAME           TPU name
  --zone ZONE           e.g. us-central2-b (v4), us-west4-a (v5e)
  --accelerator TYPE    accelerator type: v4-8, v4-32, v5litepod-8, v5litepod-16, ...
  --version VERSION     TPU software version (default: tpu-ubuntu2204-base; v5e: v2-alpha-tpuv5-lite)
  --project PROJECT     GCP project (default: gcloud's configured project)
  --spot                a preemptible (spot) TPU
  --dry-run             print the gcloud command, run nothing
  -h, --help            this help
USAGE
}

NAME="" ZONE="" ACCELERATOR="" VERSION="" PROJECT="" SPOT=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --accelerator) ACCELERATOR="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
need name "${NAME}"; need zone "${ZONE}"; need accelerator "${ACCELERATOR}"
if [[ -z "${VERSION}" ]]; then
  case "${ACCELERATOR}" in
    v5litepod-*) VERSION="v2-alpha-tpuv5-lite" ;;
    *) VERSION="tpu-ubuntu2204-base" ;;
  esac
fi

args=(gcloud compute tpus tpu-vm create "${NAME}" --zone="${ZONE}" --accelerator-type="${ACCELERATOR}" --version="${VERSION}")
[[ -n "${PROJECT}" ]] && args+=(--project="${PROJECT}")
[[ "${SPOT}" == 1 ]] && args+=(--spot)
run "${args[@]}"
