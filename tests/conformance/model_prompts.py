#!/usr/bin/env python3
"""Records the prompts graphon (Dify's engine) sends to the model for the cases in
tests/conformance/model-prompts/cases.json (parameter extractors) and vision-cases.json (llm
nodes with files), and what its nodes make of the model's replies.

For each case the DSL runs on graphon 0.8 through the oracle runner with a recording model in
place of the mocked one: it advertises tool calling when the case says so (as Dify's model
schemas do with the `tool-call` feature), returns the case's reply for each node (text and an
optional tool call) and keeps every prompt message, tool and stop word it was given. The
conversation's earlier turns reach the nodes through a memory holding the case's `history`,
as Dify's TokenBufferMemory would give them (newest `message_limit` turns).

Vision cases give files (remote URLs, as the start form and `sys.files` carry them) with their
bytes: a file runtime serves those bytes to graphon and asks for base64 (Dify's default
MULTIMODAL_SEND_FORMAT), and the recording model advertises the case's `features` (vision,
document, audio, video), which decide what graphon leaves in the prompt.

Writes tests/conformance/model-prompts/expected/<id>.json:
    {"status", "calls": [{"node_id", "messages", "tools", "stop"}],
     "nodes": {node_id: {"outputs", "error"}}, "answer"}
Run with the oracle virtualenv:  $(scripts/oracle-python) tests/conformance/model_prompts.py
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "conformance" / "model-prompts"
ORACLE_DIR = Path(os.environ.get("FLOWGATE_ORACLE_DIR", ROOT.parent / "shared" / "oracle")).resolve()
sys.path.insert(0, str(ORACLE_DIR))

import run_dsl  # noqa: E402  (the oracle runner)
from graphon.model_runtime.entities.llm_entities import LLMResult, LLMUsage  # noqa: E402
from graphon.model_runtime.entities.message_entities import (  # noqa: E402
    AssistantPromptMessage,
    ToolPromptMessage,
    UserPromptMessage,
)
from graphon.model_runtime.entities.model_entities import ModelFeature, ModelPropertyKey  # noqa: E402
from graphon.file.enums import FileTransferMethod, FileType  # noqa: E402
from graphon.file.models import File  # noqa: E402
from graphon.file.runtime import use_workflow_file_runtime  # noqa: E402
from graphon.nodes.llm.node import LLMNode  # noqa: E402
from graphon.nodes.parameter_extractor.parameter_extractor_node import ParameterExtractorNode  # noqa: E402

CASE: dict = {}
CALLS: list[dict] = []


class HistoryMemory:
    """The conversation so far, newest `message_limit` turns (TokenBufferMemory's rule)."""

    def __init__(self, turns):
        self._turns = turns

    def get_history_prompt_messages(self, max_token_limit=2000, message_limit=None):
        limit = message_limit if message_limit and message_limit > 0 else 500
        messages = []
        for query, answer in self._turns[-limit:]:
            messages.append(UserPromptMessage(content=query))
            messages.append(AssistantPromptMessage(content=answer))
        return messages


def content_json(item) -> dict:
    if item.type.value == "text":
        return {"type": "text", "text": item.data}
    out = {"type": item.type.value, "base64_data": item.base64_data, "url": item.url,
           "mime_type": item.mime_type, "format": item.format, "filename": item.filename}
    if item.type.value == "image":
        out["detail"] = item.detail.value
    return out


def message_json(message) -> dict:
    content = message.content
    if isinstance(content, list):
        out = {"role": message.role.value, "content": [content_json(item) for item in content]}
    else:
        out = {"role": message.role.value, "content": message.get_text_content()}
    if isinstance(message, AssistantPromptMessage) and message.tool_calls:
        out["tool_calls"] = [
            {"id": call.id, "name": call.function.name, "arguments": call.function.arguments}
            for call in message.tool_calls
        ]
    if isinstance(message, ToolPromptMessage):
        out["tool_call_id"] = message.tool_call_id
    return out


class RecordingLLM(run_dsl.MockLLM):
    def get_model_schema(self):
        schema = super().get_model_schema()
        features = list(schema.features or [])
        if CASE.get("tool_calls"):
            features += [ModelFeature.TOOL_CALL, ModelFeature.MULTI_TOOL_CALL]
        features += [ModelFeature(name) for name in CASE.get("features", [])]
        mode = (self._node_data.get("model") or {}).get("mode") or "chat"
        properties = dict(schema.model_properties)
        properties[ModelPropertyKey.MODE] = mode
        return schema.model_copy(update={"features": features, "model_properties": properties})

    def invoke_llm(self, *, prompt_messages, model_parameters, tools, stop, stream):
        CALLS.append({
            "node_id": self._node_id,
            "messages": [message_json(message) for message in prompt_messages],
            "tools": [
                {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
                for tool in (tools or [])
            ],
            "stop": list(stop or []),
        })
        reply = CASE["replies"][self._node_id]
        tool_calls = []
        if "tool_call" in reply:
            tool_calls.append(AssistantPromptMessage.ToolCall(
                id="call_mock_1", type="function",
                function=AssistantPromptMessage.ToolCall.ToolCallFunction(
                    name=reply["tool_call"]["name"], arguments=reply["tool_call"]["arguments"])))
        if stream:
            return self._chunks(reply["text"], prompt_messages)
        return LLMResult(model=self._model_name, prompt_messages=list(prompt_messages),
                         message=AssistantPromptMessage(content=reply["text"], tool_calls=tool_calls),
                         usage=LLMUsage.empty_usage())


run_dsl.MockLLM = RecordingLLM
_original_init = ParameterExtractorNode.__init__


def _init_with_memory(self, *args, **kwargs):
    _original_init(self, *args, **kwargs)
    self._memory = HistoryMemory(CASE.get("history") or [])


ParameterExtractorNode.__init__ = _init_with_memory
_original_llm_init = LLMNode.__init__


def _llm_init_with_memory(self, *args, **kwargs):
    _original_llm_init(self, *args, **kwargs)
    if self.node_data.memory is not None:
        self._memory = HistoryMemory(CASE.get("history") or [])


LLMNode.__init__ = _llm_init_with_memory


class Response:
    def __init__(self, content: bytes):
        self.content = content
        self.status_code = 200

    def raise_for_status(self):
        pass


class FileRuntime:
    """Serves the case's file bytes by URL; prompts carry files as base64."""

    multimodal_send_format = "base64"

    def http_get(self, url, *, follow_redirects=True):
        return Response(CASE["file_bytes"][url].encode())

    def load_file_bytes(self, *, file):
        return CASE["file_bytes"][file.remote_url].encode()

    def resolve_file_url(self, *, file, for_external=True):
        return file.remote_url


def graphon_file(spec: dict) -> File:
    """A remote-URL file as Dify's file factory builds it from a start-form mapping."""
    url = spec["url"]
    filename = url.split("?")[0].rsplit("/", 1)[-1]
    extension = "." + filename.rsplit(".", 1)[-1].lower()
    return File(file_type=FileType(spec["type"]), transfer_method=FileTransferMethod.REMOTE_URL, remote_url=url,
                filename=filename, extension=extension, mime_type=mimetypes.guess_type(filename)[0])


def file_inputs(inputs: dict) -> dict:
    return {name: [graphon_file(item) for item in value] if isinstance(value, list) else graphon_file(value)
            for name, value in inputs.items()}


def main() -> int:
    cases = json.loads((HERE / "cases.json").read_text())
    vision = json.loads((HERE / "vision-cases.json").read_text())
    wanted = set(sys.argv[1:])
    (HERE / "expected").mkdir(exist_ok=True)
    for case in cases + vision:
        if wanted and case["id"] not in wanted:
            continue
        CASE.clear()
        CASE.update(case)
        CALLS.clear()
        if "file_bytes" in case:
            with use_workflow_file_runtime(FileRuntime()):
                result = run_dsl.run_case((HERE / case["dsl"]).read_text(), inputs=file_inputs(case["inputs"]),
                                          raw_inputs=True, query=case.get("query"), event_outputs=True,
                                          sys_vars={"files": [graphon_file(spec) for spec in case["sys_files"]]})
        else:
            result = run_dsl.run_case((HERE / case["dsl"]).read_text(), inputs=case.get("inputs"),
                                      query=case.get("query"), event_outputs=True)
        if result["status"] not in ("succeeded", "partial-succeeded"):
            print(f"{case['id']}: {result['status']}: {result.get('error')}", file=sys.stderr)
            return 1
        finished = ("NodeRunSucceededEvent", "NodeRunExceptionEvent")
        nodes = {event["node_id"]: {"outputs": event["outputs"], "error": event.get("error")}
                 for event in result["events"]
                 if event["type"] in finished and event.get("node_type") in ("parameter-extractor", "llm")}
        expected = {"source": "graphon 0.8.0 via tests/conformance/model_prompts.py",
                    "status": result["status"], "calls": list(CALLS), "nodes": nodes, "answer": result["text"]}
        path = HERE / "expected" / f"{case['id']}.json"
        path.write_text(json.dumps(expected, ensure_ascii=False, indent=1) + "\n")
        print(f"{case['id']}: {len(CALLS)} calls -> {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
