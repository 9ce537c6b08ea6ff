# Shared by the end-to-end scripts of deploy/ (sourced, not run). Set E2E to the script's name
# for its messages.

# Waits until the command succeeds (its output discarded), polling; says so, or fails after the
# deadline naming what it waited for.
#   wait_for WHAT SECONDS COMMAND [ARG...]
wait_for() {
  local what="$1" seconds="$2"
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "${E2E:-e2e}: timed out after ${seconds}s waiting for $what" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "${E2E:-e2e}: $what"
}
