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

# quote VALUE: VALUE as exactly one word of a command run by a remote shell (printf %q), so
# that spaces, quotes and ';' in it stay data. A leading "~/" becomes "$HOME"/, which the
# remote shell expands to the worker's home (a quoted ~ would not expand).
quote() {
  local value="$1"
  # shellcheck disable=SC2088,SC2016  # a literal "~/" is matched, and "$HOME" is for the remote shell
  if [[ "${value}" == "~/"* ]]; then
    printf '"$HOME"/%q' "${value#"~/"}"
  else
    printf '%q' "${value}"
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
