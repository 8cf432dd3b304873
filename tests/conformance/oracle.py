#!/usr/bin/env python3
"""Produce the conformance suite's expected results by running every case on graphon.

graphon is the engine Dify itself runs. This driver uses the graphon oracle runner
(`run_dsl.py` from the directory in FLOWGATE_ORACLE_DIR) to build each engine with the
case's mocks, adds Dify's execution-limits layer when a case sets limits, runs it with one
worker (so event order is deterministic) and writes one normalised JSON file per case:

    {"status", "outputs", "answer", "error", "events", "conversation_variables"}

`events` lists node-level events as "Event:node_id" (plus ":index" for next events).
Run through `regenerate.sh`, which prepares the virtualenv and the HTTP fixture server.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ORACLE_DIR = Path(os.environ.get("FLOWGATE_ORACLE_DIR", ROOT.parent / "shared" / "oracle")).resolve()
sys.path.insert(0, str(ORACLE_DIR))

import run_dsl  # noqa: E402  (the oracle runner)
from graphon.engine.filter import EngineEventFilterContext, ResponseStreamFilter  # noqa: E402
from graphon.engine.layer.builtin.execution_limits import ExecutionLimitsLayer  # noqa: E402
from graphon.engine_events import (  # noqa: E402
    GraphRunAbortedEvent,
    GraphRunFailedEvent,
    GraphRunPartialSucceededEvent,
    GraphRunSucceededEvent,
    NodeRunStreamChunkEvent,
)

NODE_EVENTS = {
    "NodeRunStartedEvent",
    "NodeRunSucceededEvent",
    "NodeRunFailedEvent",
    "NodeRunExceptionEvent",
    "NodeRunRetryEvent",
    "NodeRunIterationStartedEvent",
    "NodeRunIterationNextEvent",
    "NodeRunIterationSucceededEvent",
    "NodeRunIterationFailedEvent",
    "NodeRunLoopStartedEvent",
    "NodeRunLoopNextEvent",
    "NodeRunLoopSucceededEvent",
    "NodeRunLoopFailedEvent",
    "NodeRunVariableUpdatedEvent",
}

TERMINAL = {
    GraphRunSucceededEvent: "succeeded",
    GraphRunPartialSucceededEvent: "partial-succeeded",
    GraphRunFailedEvent: "failed",
    # Dify reports an aborted run (limits) as failed, with the abort reason as its error.
    GraphRunAbortedEvent: "failed",
}


def run_case(case: dict) -> dict:
    dsl_text = (ROOT / case["dsl"]).read_text(encoding="utf-8")
    mocks = case.get("mocks") or {}
    cfg = run_dsl.OracleConfig(mocks=dict(mocks), auto_mock=True, mock_http=False)
    try:
        engine, _info = run_dsl.build_engine(
            dsl_text,
            case.get("inputs") or {},
            query=case.get("query"),
            conversation_overrides=case.get("conversation"),
            cfg=cfg,
            workers=1,
        )
    except Exception as error:  # noqa: BLE001 - recorded as the expectation
        return {"status": "load-failed", "error": str(error)}
    limits = case.get("limits")
    if limits:
        engine.add_layer(ExecutionLimitsLayer(max_steps=limits.get("max_steps", 500), max_time=limits.get("max_time", 1200)))

    stream_filter = ResponseStreamFilter()
    stream_filter.initialize(EngineEventFilterContext.from_engine(engine))
    text: list[str] = []
    events: list[str] = []
    status, outputs, error = "unknown", {}, None

    def take(filtered):
        for out in filtered:
            if isinstance(out, NodeRunStreamChunkEvent) and out.chunk:
                text.append(out.chunk)

    try:
        for event in engine.run():
            name = type(event).__name__
            if name in NODE_EVENTS:
                entry = f"{name}:{event.node_id}"
                if hasattr(event, "index") and name.endswith("NextEvent"):
                    entry += f":{event.index}"
                events.append(entry)
            take(stream_filter.on_event(event))
            kind = TERMINAL.get(type(event))
            if kind is not None:
                status = kind
                outputs = getattr(event, "outputs", None) or {}
                if isinstance(event, GraphRunFailedEvent):
                    error = event.error
                elif isinstance(event, GraphRunAbortedEvent):
                    error = event.reason
        take(stream_filter.flush())
    except Exception as exc:  # noqa: BLE001 - graphon re-raises after a failure event
        status = "failed"
        error = error or f"{type(exc).__name__}: {exc}"
    conversation = run_dsl.to_jsonable(dict(engine.runtime_state.variable_pool.get_by_prefix("conversation")))
    return {
        "status": status,
        "outputs": run_dsl.to_jsonable(outputs),
        "answer": "".join(text),
        "error": error,
        "events": events,
        "conversation_variables": conversation,
    }


def main() -> int:
    cases_path = ROOT / "tests" / "conformance" / "cases.jsonl"
    out_dir = ROOT / "tests" / "conformance" / "expected"
    out_dir.mkdir(parents=True, exist_ok=True)
    only = set(sys.argv[1:])
    for line in cases_path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        case = json.loads(line)
        if only and case["id"] not in only:
            continue
        result = run_case(case)
        path = out_dir / f"{case['id']}.json"
        path.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"{case['id']}: {result['status']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
