"""Drives a running `flowgate serve` with the published Dify SDK (`dify-python-sdk`, module
`dify_client`), used unchanged. Expected values come from graphon (tests/conformance/expected),
Dify's documented API behaviour, or Python itself (what Dify's `str()` formatting gives).

Environment: FLOWGATE_URL (http://host:port), FLOWGATE_KEYS (JSON: workflow, chat, upload, slow),
FLOWGATE_ROOT (the repository). Exits non-zero with a message on the first failed check.
"""

import http.server
import json
import os
import threading
import time
import uuid

import httpx
from dify_client import ChatClient, DifyClient, WorkflowClient
from dify_client.exceptions import DifyClientError

BASE = os.environ["FLOWGATE_URL"] + "/v1"
KEYS = json.loads(os.environ["FLOWGATE_KEYS"])
ROOT = os.environ["FLOWGATE_ROOT"]
USER = f"sdk-{uuid.uuid4().hex[:8]}"


def expected(case):
    with open(os.path.join(ROOT, "tests/conformance/expected", case + ".json"), encoding="utf-8") as file:
        return json.load(file)


def case_inputs(case_id):
    with open(os.path.join(ROOT, "tests/conformance/cases.jsonl"), encoding="utf-8") as file:
        for line in file:
            case = json.loads(line)
            if case["id"] == case_id:
                return case.get("inputs") or {}
    raise KeyError(case_id)


def client(kind, key):
    return kind(api_key=key, base_url=BASE, max_retries=0)


def sse_events(text):
    events = []
    for line in text.splitlines():
        if line.startswith("data: "):
            events.append(json.loads(line[len("data: "):]))
    return events


def error_of(call):
    try:
        call()
    except DifyClientError as error:
        return error.status_code, (error.response or {}).get("code") if isinstance(error.response, dict) else None
    raise AssertionError("the call should have failed")


class Files(http.server.BaseHTTPRequestHandler):
    """Serves a document for remote_url inputs and a slow endpoint for stop."""

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(6)
            body = b"late"
        else:
            with open(os.path.join(ROOT, "tests/conformance/documents/plain.txt"), "rb") as file:
                body = file.read()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def workflow_checks():
    workflows = client(WorkflowClient, KEYS["workflow"])
    inputs = case_inputs("bench10-noio-long-path")
    outputs = expected("bench10-noio-long-path")["outputs"]

    blocking = workflows.run(inputs, response_mode="blocking", user=USER).json()
    assert blocking["data"]["status"] == "succeeded", blocking
    assert blocking["data"]["outputs"] == outputs, blocking
    run_id = blocking["workflow_run_id"]

    streamed = sse_events(workflows.run(inputs, response_mode="streaming", user=USER).text)
    assert streamed[0]["event"] == "workflow_started", streamed[0]
    assert streamed[-1]["event"] == "workflow_finished", streamed[-1]
    assert streamed[-1]["data"]["outputs"] == outputs
    assert all(event["task_id"] == streamed[0]["task_id"] for event in streamed)
    node_events = [event for event in streamed if event["event"] == "node_finished"]
    assert len(node_events) == len(expected("bench10-noio-long-path")["events"]) // 2

    pinned = workflows.run_specific_workflow(blocking["data"]["workflow_id"], inputs, response_mode="blocking", user=USER).json()
    assert pinned["data"]["outputs"] == outputs, pinned

    # Read right after the answer, as a client does: the answer came only once the run was stored.
    result = workflows.get_result(run_id).json()
    assert result["status"] == "succeeded", result
    assert result["outputs"] == outputs
    assert json.loads(result["inputs"])["text"] == inputs["text"]

    logs = workflows.get_workflow_logs(status="succeeded", created_by_end_user_session_id=USER).json()
    assert logs["total"] >= 3, logs
    assert all(item["workflow_run"]["status"] == "succeeded" for item in logs["data"])
    assert all(item["created_by_end_user"]["session_id"] == USER for item in logs["data"])
    assert logs["page"] == 1 and logs["limit"] == 20

    missing = {key: value for key, value in inputs.items() if key != "text"}
    assert error_of(lambda: workflows.run(missing, response_mode="blocking", user=USER)) == (400, "invalid_param")
    assert error_of(lambda: client(WorkflowClient, "app-not-a-key").run(inputs, response_mode="blocking", user=USER))[0] == 401
    assert error_of(lambda: client(WorkflowClient, KEYS["chat"]).run(inputs, response_mode="blocking", user=USER)) == (400, "not_workflow_app")

    info = workflows.get_app_info().json()
    assert info["mode"] == "workflow", info
    parameters = workflows.get_application_parameters(USER).json()
    assert [next(iter(item)) for item in parameters["user_input_form"]] == ["text-input", "number"], parameters
    assert parameters["system_parameters"]["file_size_limit"] == 15
    assert workflows.get_meta(USER).json() == {"tool_icons": {}}
    assert workflows.get_app_site_info().json()["title"] == info["name"]


def upload_checks(files_url):
    uploads = client(WorkflowClient, KEYS["upload"])
    plain = expected("documents")["plain.txt"]["text"]
    with open(os.path.join(ROOT, "tests/conformance/documents/plain.txt"), "rb") as file:
        uploaded = uploads.file_upload(USER, {"file": ("plain.txt", file, "text/plain")})
    assert uploaded.status_code == 201, uploaded.text
    record = uploaded.json()
    assert record["name"] == "plain.txt" and record["extension"] == "txt" and record["mime_type"] == "text/plain", record
    assert record["size"] == len(plain.encode())

    local = {"doc": {"type": "document", "transfer_method": "local_file", "upload_file_id": record["id"]}}
    run = uploads.run(local, response_mode="blocking", user=USER).json()
    assert run["data"]["status"] == "succeeded", run
    assert run["data"]["outputs"]["text"] == plain

    remote = {"doc": {"type": "document", "transfer_method": "remote_url", "url": files_url + "/plain.txt"}}
    run = uploads.run(remote, response_mode="blocking", user=USER).json()
    assert run["data"]["outputs"]["text"] == plain, run

    unknown = {"doc": {"type": "document", "transfer_method": "local_file", "upload_file_id": str(uuid.uuid4())}}
    assert error_of(lambda: uploads.run(unknown, response_mode="blocking", user=USER)) == (400, "invalid_param")
    response = httpx.post(BASE + "/files/upload", headers={"Authorization": "Bearer " + KEYS["upload"]}, data={"user": USER})
    assert response.status_code == 400 and response.json()["code"] == "no_file_uploaded", response.text


def stop_checks(files_url):
    slow = client(WorkflowClient, KEYS["slow"])
    started = time.time()
    body = {"inputs": {"url": files_url + "/slow"}, "response_mode": "streaming", "user": USER}
    headers = {"Authorization": "Bearer " + KEYS["slow"]}
    events = []
    with httpx.stream("POST", BASE + "/workflows/run", json=body, headers=headers, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers.get("x-accel-buffering") == "no"
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[len("data: "):])
            events.append(event)
            if event["event"] == "node_started" and event["data"]["node_id"] == "fetch":
                assert slow.stop(event["task_id"], USER).json() == {"result": "success"}
    assert events[-1]["event"] == "workflow_finished", events[-1]
    assert events[-1]["data"]["status"] == "stopped", events[-1]
    assert time.time() - started < 5, "stop did not end the run early"
    run_id = events[0]["workflow_run_id"]
    assert slow.get_result(run_id).json()["status"] == "stopped"


def chat_checks():
    chat = client(ChatClient, KEYS["chat"])
    turns = [expected(f"service-chatflow-turn-{n}")["answer"] for n in (1, 2, 3)]

    def answer_for(turn):
        # graphon runs every case as a first turn; the count is the conversation's own.
        return f"{turn}|" + turns[turn - 1].split("|", 1)[1]

    first = chat.create_chat_message({"topic": "rust"}, "hello", USER, response_mode="blocking").json()
    assert first["answer"] == answer_for(1), first
    assert first["mode"] == "advanced-chat" and first["event"] == "message"
    conversation_id = first["conversation_id"]

    streamed = sse_events(chat.create_chat_message({"topic": "ignored"}, "again", USER, "streaming", conversation_id).text)
    kinds = [event["event"] for event in streamed]
    assert kinds[0] == "workflow_started" and kinds[-2:] == ["workflow_finished", "message_end"], kinds
    assert "".join(event["answer"] for event in streamed if event["event"] == "message") == answer_for(2)
    assert all(event["conversation_id"] == conversation_id for event in streamed)

    variables = {item["name"]: item for item in chat.get_conversation_variables(conversation_id, USER).json()["data"]}
    assert variables["turns"]["value"] == str(["hello", "again"]), variables
    assert variables["turns"]["value_type"] == "array[string]"
    assert variables["note"]["value"] == "none"
    updated = chat.update_conversation_variable(conversation_id, variables["note"]["id"], "edited", USER).json()
    assert updated["value"] == "edited", updated
    assert error_of(lambda: chat.update_conversation_variable(conversation_id, variables["note"]["id"], 5, USER)) == (400, "bad_request")

    third = chat.create_chat_message({"topic": "rust"}, "third", USER, "blocking", conversation_id).json()
    assert third["answer"] == answer_for(3), third

    messages = chat.get_conversation_messages(USER, conversation_id).json()
    assert [message["query"] for message in messages["data"]] == ["hello", "again", "third"], messages
    assert [message["answer"] for message in messages["data"]] == [answer_for(1), answer_for(2), answer_for(3)]
    assert messages["data"][1]["parent_message_id"] == messages["data"][0]["id"]
    assert not messages["has_more"]
    page = chat.get_conversation_messages(USER, conversation_id, first_id=messages["data"][2]["id"], limit=1).json()
    assert [message["query"] for message in page["data"]] == ["again"] and page["has_more"], page

    assert chat.message_feedback(third["message_id"], "like", USER).json() == {"result": "success"}
    rated = chat.get_conversation_messages(USER, conversation_id).json()["data"][2]
    assert rated["feedback"] == {"rating": "like"}, rated

    renamed = chat.rename_conversation(conversation_id, "renamed", False, USER).json()
    assert renamed["name"] == "renamed", renamed
    listed = chat.get_conversations(USER).json()
    assert [item["name"] for item in listed["data"]] == ["renamed"], listed
    assert listed["data"][0]["introduction"] == "Hello from the test chatflow"

    assert error_of(lambda: chat.create_chat_message({"topic": "rust"}, "x", USER, "blocking", str(uuid.uuid4()))) == (404, "not_found")
    assert error_of(lambda: chat.create_chat_message({}, "x", USER, "blocking")) == (400, "invalid_param")
    assert error_of(lambda: client(ChatClient, KEYS["workflow"]).create_chat_message({}, "x", USER)) == (400, "not_chat_app")
    other_user = chat.get_conversations(USER + "-other").json()
    assert other_user["data"] == [], "conversations are per user"

    deleted = chat.delete_conversation(conversation_id, USER)
    assert deleted.status_code == 204
    assert error_of(lambda: chat.get_conversation_messages(USER, conversation_id)) == (404, "not_found")
    assert DifyClient(api_key=KEYS["chat"], base_url=BASE, max_retries=0).get_app_info().json()["mode"] == "advanced-chat"


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    files_url = f"http://127.0.0.1:{server.server_address[1]}"
    for check in (workflow_checks, lambda: upload_checks(files_url), lambda: stop_checks(files_url), chat_checks):
        check()
    print("sdk checks passed")


if __name__ == "__main__":
    main()
