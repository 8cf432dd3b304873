"""graphon side of the engine benchmark: one workload, in-process, printed as one JSON line.

    python graphon_bench.py DSL.yml INPUTS.json SECONDS

Uses the oracle runner (FLOWGATE_ORACLE_DIR) to build graphon's engine from the DSL with
Dify's input-form processing. "ms_per_run" is what Dify does per request: load the YAML,
build the graph and run it; "run_only_ms" reuses the parsed YAML. One engine worker, as the
conformance oracle uses.
"""

import json
import os
import resource
import sys
import time

sys.path.insert(0, os.environ["FLOWGATE_ORACLE_DIR"])
import run_dsl  # noqa: E402


def run_once(text, inputs):
    engine, _info = run_dsl.build_engine(text, inputs, workers=1)
    return run_dsl.run(engine, collect_events=False, response_stream=False)


def timed(seconds, text, inputs):
    """Mean milliseconds per run over about `seconds` (at least five runs), after a warm-up."""
    for _ in range(3):
        run_once(text, inputs)
    runs, started = 0, time.perf_counter()
    while runs < 5 or time.perf_counter() - started < seconds:
        run_once(text, inputs)
        runs += 1
    return (time.perf_counter() - started) * 1e3 / runs, runs


def main():
    dsl_path, inputs_path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with open(dsl_path, encoding="utf-8") as handle:
        text = handle.read()
    with open(inputs_path, encoding="utf-8") as handle:
        inputs = json.load(handle)

    first = run_once(text, inputs)
    ms_per_run, runs = timed(seconds / 2, text, inputs)

    # Parse once: later builds get the already-loaded document.
    parsed = run_dsl.yaml.load(text, Loader=run_dsl._YamlLoader)
    real_load = run_dsl.yaml.load
    run_dsl.yaml.load = lambda *_args, **_kwargs: parsed
    try:
        run_only_ms, run_only_runs = timed(seconds / 2, text, inputs)
    finally:
        run_dsl.yaml.load = real_load

    print(json.dumps({
        "ms_per_run": ms_per_run,
        "runs": runs,
        "run_only_ms": run_only_ms,
        "run_only_runs": run_only_runs,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "status": first["status"],
        "outputs": first["outputs"],
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()
