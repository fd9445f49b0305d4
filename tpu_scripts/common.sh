#!/usr/bin/env bash
# Shared by the tpu_scripts: option parsing helpers and a runner that prints instead of
# running under --dry-run. Source it; do not run it.

DRY_RUN=0

# run CMD...: print the command (shell-quoted), then run it unless --dry-run was given.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ "${DRY_RUN}" == 0 ]]; then
    "$@"
  fi
}

die() {
  echo "error: $*" >&2
  exit 2
}

# need NAME VALUE: fail with a clear message when a required option is missing.
need() {
  [[ -n "$2" ]] || die "--$1 is required (see --help)"
}
