#!/usr/bin/env bash
# Regenerates tests/conformance/expected/*.json by running every case on graphon 0.8 (Dify's
# engine) through the oracle runner, in the virtualenv scripts/oracle-python creates.
#   tests/conformance/regenerate.sh            # all cases, the document-extractor expectations and
#                                              # the parameter extractor's prompts (model-prompts/)
#   tests/conformance/regenerate.sh CASE_ID... # some cases
# FLOWGATE_ORACLE_DIR points at the oracle runner (default: ../shared/oracle next to the repo).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
oracle="${FLOWGATE_ORACLE_DIR:-$root/../shared/oracle}"
python="$("$root/scripts/oracle-python")"
cd "$root"
cargo build --quiet -p flowgate-server --example http_fixture
target/debug/examples/http_fixture 127.0.0.1:18731 &
fixture=$!
trap 'kill $fixture 2>/dev/null || true' EXIT
sleep 0.3
FLOWGATE_ORACLE_DIR="$oracle" "$python" tests/conformance/oracle.py "$@"
if [ "$#" -eq 0 ]; then
  "$python" tests/conformance/documents.py
  FLOWGATE_ORACLE_DIR="$oracle" "$python" tests/conformance/model_prompts.py
fi
