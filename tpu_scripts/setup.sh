#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Install srit_jax on every worker of a TPU VM or pod slice and copy configs there.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/setup.sh --name NAME --zone ZONE [options]

On every worker: a virtualenv in ~/srit, srit_jax with JAX for TPU, and the configs folder.

  --name NAME        TPU name
  --zone ZONE        its zone
  --source SPEC      what to pip install (default: this checkout, copied over; or e.g.
                     "git+https://github.com/ORG/srit_jax.git")
  --configs DIR      configs folder to copy (default: configs/ of this checkout)
  --bucket BUCKET    check that every worker can write gs://BUCKET, the shared workdir of a pod:
                     launch with --workdir gs://BUCKET/RUN (checkpoints through Orbax's own
                     Cloud Storage path; no gcsfuse, whose renames copy every checkpoint again)
  --mount-data BUCKET  mount gs://BUCKET read-only at ~/srit/data with gcsfuse (data files)
  --project PROJECT  GCP project
  --dry-run          print the commands, run nothing
  -h, --help         this help
USAGE
}

NAME="" ZONE="" SOURCE="" CONFIGS="" BUCKET="" DATA_BUCKET="" PROJECT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --source) SOURCE="$2"; shift 2 ;;
    --configs) CONFIGS="$2"; shift 2 ;;
    --bucket) BUCKET="$2"; shift 2 ;;
    --mount-data) DATA_BUCKET="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
need name "${NAME}"; need zone "${ZONE}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CONFIGS="${CONFIGS:-${ROOT}/configs}"
common=(--zone="${ZONE}")
[[ -n "${PROJECT}" ]] && common+=(--project="${PROJECT}")

if [[ -z "${SOURCE}" ]]; then
  run tar -czf /tmp/srit_jax_src.tgz -C "${ROOT}" --exclude=.venv --exclude=.git --exclude=runs .
  run gcloud compute tpus tpu-vm scp /tmp/srit_jax_src.tgz "${NAME}:~/srit_jax_src.tgz" --worker=all "${common[@]}"
  # Single quotes on purpose: $HOME expands on the workers.
  # shellcheck disable=SC2016
  install='mkdir -p ~/srit/src && tar -xzf ~/srit_jax_src.tgz -C ~/srit/src && ~/srit/venv/bin/pip install -q "$HOME/srit/src[tpu]"'
else
  install="\$HOME/srit/venv/bin/pip install -q $(quote "${SOURCE}") 'jax[tpu]'"
fi
run gcloud compute tpus tpu-vm ssh "${NAME}" --worker=all "${common[@]}" \
  --command="python3 -m venv ~/srit/venv && ~/srit/venv/bin/pip install -q -U pip && ${install}"
run gcloud compute tpus tpu-vm scp --recurse "${CONFIGS}" "${NAME}:~/srit/" --worker=all "${common[@]}"
if [[ -n "${BUCKET}" ]]; then
  # Each worker writes and removes a probe object with the library the runs use.
  # shellcheck disable=SC2016
  probe='import sys; from etils import epath; p = epath.Path(sys.argv[1]); p.write_text("ok"); p.unlink(missing_ok=True)'
  run gcloud compute tpus tpu-vm ssh "${NAME}" --worker=all "${common[@]}" \
    --command="~/srit/venv/bin/python -c $(quote "${probe}") $(quote "gs://${BUCKET}/.srit_jax_probe")"
  echo "every worker writes gs://${BUCKET}: launch with --workdir gs://${BUCKET}/RUN"
fi
if [[ -n "${DATA_BUCKET}" ]]; then
  run gcloud compute tpus tpu-vm ssh "${NAME}" --worker=all "${common[@]}" \
    --command="mkdir -p ~/srit/data && gcsfuse --implicit-dirs -o ro $(quote "${DATA_BUCKET}") ~/srit/data"
fi
