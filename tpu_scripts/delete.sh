#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Delete a TPU VM or pod slice (it bills while it exists).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/delete.sh --name NAME --zone ZONE [--project PROJECT] [--dry-run]
USAGE
}

NAME="" ZONE="" PROJECT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
need name "${NAME}"; need zone "${ZONE}"
args=(gcloud compute tpus tpu-vm delete "${NAME}" --zone="${ZONE}" --quiet)
[[ -n "${PROJECT}" ]] && args+=(--project="${PROJECT}")
run "${args[@]}"
