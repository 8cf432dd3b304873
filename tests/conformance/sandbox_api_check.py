#!/usr/bin/env python3
"""graphon, Dify's engine, as a client of flowgate's dify-sandbox API.

Runs every conformance case that has code nodes on graphon with its real sandbox client
(`run_dsl.py --code sandbox`, which posts Dify's runner scripts to CODE_EXECUTION_ENDPOINT) and
compares status and outputs with the expectations graphon produced with plain local Python.
Started by `tests/conformance/sandbox-api-check.sh`, which serves the API first.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ORACLE_DIR = Path(os.environ.get("FLOWGATE_ORACLE_DIR", ROOT.parent / "shared" / "oracle")).resolve()


def main():
    endpoint = sys.argv[1]
    same, different = 0, []
    for line in (ROOT / "tests/conformance/cases.jsonl").read_text(encoding="utf-8").splitlines():
        case = json.loads(line)
        dsl = ROOT / case.get("flowgate_dsl", case["dsl"])
        if "type: code" not in dsl.read_text(encoding="utf-8"):
            continue
        expected = json.loads((ROOT / f"tests/conformance/expected/{case['id']}.json").read_text(encoding="utf-8"))
        command = [sys.executable, str(ORACLE_DIR / "run_dsl.py"), str(ROOT / case["dsl"]), "--code", "sandbox",
                   "--inputs", json.dumps(case.get("inputs", {}))]
        if case.get("query") is not None:
            command += ["--query", case["query"]]
        if case.get("mocks"):
            command += ["--mocks", json.dumps(case["mocks"])]
        environment = dict(os.environ, CODE_EXECUTION_ENDPOINT=endpoint, CODE_EXECUTION_API_KEY="dify-sandbox")
        finished = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
        lines = finished.stdout.strip().splitlines()
        got = json.loads(lines[-1]) if lines else {"status": "no output", "error": finished.stderr[-500:]}
        if got.get("status") == expected["status"] and (got.get("outputs") or {}) == expected["outputs"]:
            same += 1
        else:
            different.append(f"{case['id']}: {got.get('status')} {got.get('error')} {got.get('outputs')}")
    print(f"{same} code cases give graphon's result through flowgate's sandbox API, {len(different)} differ")
    for line in different:
        print("  " + line)
    sys.exit(1 if different else 0)


if __name__ == "__main__":
    main()
