#!/usr/bin/env bash
# Regenerates tests/conformance/expected/*.json by running every case on graphon 0.8 (Dify's
# engine) through the oracle runner. Creates its own virtualenv (graphon needs Python >= 3.12).
#   tests/conformance/regenerate.sh            # all cases
#   tests/conformance/regenerate.sh CASE_ID... # some cases
# FLOWGATE_ORACLE_DIR points at the oracle runner (default: ../shared/oracle next to the repo).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
oracle="${FLOWGATE_ORACLE_DIR:-$root/../shared/oracle}"
venv="$root/tests/conformance/.venv"
if [ ! -f "$oracle/run_dsl.py" ]; then
  echo "oracle runner not found at $oracle (set FLOWGATE_ORACLE_DIR)" >&2
  exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
  python=""
  for candidate in python3.13 python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12.*/bin/python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      python="$candidate"
      break
    fi
  done
  if [ -z "$python" ]; then
    echo "graphon needs Python >= 3.12; none found" >&2
    exit 2
  fi
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet -r "$oracle/requirements.lock.txt"
fi
cd "$root"
cargo build --quiet -p flowgate-server --example http_fixture
target/debug/examples/http_fixture 127.0.0.1:18731 &
fixture=$!
trap 'kill $fixture 2>/dev/null || true' EXIT
sleep 0.3
FLOWGATE_ORACLE_DIR="$oracle" "$venv/bin/python" tests/conformance/oracle.py "$@"
