#!/usr/bin/env bash
# graphon's own dify-sandbox client against `flowgate serve` with FLOWGATE_SANDBOX_API_KEY:
# every conformance case with code nodes must give the result graphon gives with plain Python.
# The server's code runs in the interpreter of `scripts/sdk-python sandbox-packages` (pandas,
# numpy, json_repair), which the cases marked `"python": "packages"` import.
#   tests/conformance/sandbox-api-check.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
python="$("$root/scripts/oracle-python")"
cd "$root"
cargo build --release --quiet -p flowgate-server
packages_python="$("$root/scripts/sdk-python" sandbox-packages)"
data="$(mktemp -d)"
FLOWGATE_SANDBOX_API_KEY=dify-sandbox FLOWGATE_CODE_PYTHON="$packages_python" target/release/flowgate serve --data-dir "$data" --listen 127.0.0.1:18194 >"$data/log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 50); do curl -sf 127.0.0.1:18194/health >/dev/null && break; sleep 0.1; done
"$python" tests/conformance/sandbox_api_check.py http://127.0.0.1:18194
