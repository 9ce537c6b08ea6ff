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

# Checks that the scheduler at ADDRESS (https://HOST:PORT, or HOST:PORT) runs an encrypted,
# authenticated cluster: with FILE, a cluster file whose role may read the status (admin, driver,
# view or the scheduler's), `status --json` says "TLS, credentials per role"; a plaintext call
# and a TLS call that presents no credential are both refused. CLI is the ladle-scheduler binary.
#   assert_secured CLI ADDRESS FILE
assert_secured() {
  local cli="$1" address="$2" file="$3"
  local hostport="${address#*://}" security refused ca
  # Nothing of the caller's environment speaks for the CLI but what is given here.
  local -a bare=(env -u LADLE_CLUSTER_FILE -u LADLE_TOKEN -u LADLE_TOKEN_FILE -u LADLE_CONFIG
    -u LADLE_SCHEDULER -u LADLE_TLS_CA -u LADLE_TLS_SERVER_NAME)
  security=$("${bare[@]}" LADLE_CLUSTER_FILE="$file" "$cli" status --json --scheduler "https://$hostport" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["security"])') || {
    echo "${E2E:-e2e}: cannot read the status of https://$hostport with $file" >&2
    return 1
  }
  if [[ "$security" != "TLS, credentials per role" ]]; then
    echo "${E2E:-e2e}: the scheduler at $hostport is guarded by \"$security\", not TLS and credentials per role" >&2
    return 1
  fi
  if refused=$("${bare[@]}" "$cli" status --scheduler "http://$hostport" 2>&1); then
    echo "${E2E:-e2e}: the scheduler at $hostport answered a plaintext call without a credential" >&2
    return 1
  fi
  echo "${E2E:-e2e}: plaintext call refused: ${refused:0:120}"
  # TLS that trusts the cluster's CA (taken from the file), but no credential.
  ca=$(mktemp)
  python3 -c 'import sys, tomllib; sys.stdout.write(tomllib.load(open(sys.argv[1], "rb"))["ca"])' \
    "$file" >"$ca"
  if refused=$("${bare[@]}" LADLE_TLS_CA="$ca" LADLE_TLS_SERVER_NAME=ladle-scheduler "$cli" status \
      --scheduler "https://$hostport" 2>&1); then
    rm -f "$ca"
    echo "${E2E:-e2e}: the scheduler at $hostport answered a TLS call without a credential" >&2
    return 1
  fi
  rm -f "$ca"
  if [[ "$refused" != *refused* ]]; then
    echo "${E2E:-e2e}: a TLS call without a credential failed, but not refused: $refused" >&2
    return 1
  fi
  echo "${E2E:-e2e}: TLS call without a credential refused: ${refused:0:120}"
  echo "${E2E:-e2e}: the cluster is secured: $security"
}
