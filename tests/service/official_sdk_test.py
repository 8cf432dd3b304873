"""Drives a running `flowgate serve` with Dify's official Python SDK (`dify-client` 0.1.10, which
has chat and completion clients only), used unchanged: a chatflow conversation in blocking and
streaming mode, its messages, feedback, renaming, file upload and the parameters endpoint.

Environment as for sdk_test.py. Expected answers come from graphon (tests/conformance/expected).
"""

import json
import os
import uuid

from dify_client import ChatClient

BASE = os.environ["FLOWGATE_URL"] + "/v1"
KEYS = json.loads(os.environ["FLOWGATE_KEYS"])
ROOT = os.environ["FLOWGATE_ROOT"]
USER = f"official-{uuid.uuid4().hex[:8]}"


def expected_answer(turn):
    with open(os.path.join(ROOT, f"tests/conformance/expected/service-chatflow-turn-{turn}.json"), encoding="utf-8") as file:
        answer = json.load(file)["answer"]
    # graphon runs every case as a first turn; the count is the conversation's own.
    return f"{turn}|" + answer.split("|", 1)[1]


def main():
    chat = ChatClient(KEYS["chat"])
    chat.base_url = BASE

    first = chat.create_chat_message({"topic": "rust"}, "hello", USER)
    assert first.status_code == 200, first.text
    first = first.json()
    assert first["answer"] == expected_answer(1), first
    conversation_id = first["conversation_id"]

    response = chat.create_chat_message({"topic": "rust"}, "again", USER, response_mode="streaming", conversation_id=conversation_id)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = [json.loads(line[len(b"data: "):]) for line in response.iter_lines() if line.startswith(b"data: ")]
    assert [event["event"] for event in events][-1] == "message_end", events[-1]
    assert "".join(event["answer"] for event in events if event["event"] == "message") == expected_answer(2)

    messages = chat.get_conversation_messages(USER, conversation_id=conversation_id).json()
    assert [message["answer"] for message in messages["data"]] == [expected_answer(1), expected_answer(2)], messages
    assert chat.message_feedback(first["message_id"], "dislike", USER).json() == {"result": "success"}
    assert chat.get_conversation_messages(USER, conversation_id=conversation_id).json()["data"][0]["feedback"] == {"rating": "dislike"}

    renamed = chat.rename_conversation(conversation_id, "kept", USER)
    assert renamed.status_code == 200 and renamed.json()["name"] == "kept", renamed.text
    conversations = chat.get_conversations(USER).json()
    assert [item["id"] for item in conversations["data"]] == [conversation_id], conversations

    with open(os.path.join(ROOT, "tests/conformance/documents/notes.md"), "rb") as file:
        uploaded = chat.file_upload(USER, {"file": ("notes.md", file, "text/markdown")})
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["extension"] == "md"

    parameters = chat.get_application_parameters(USER).json()
    assert parameters["opening_statement"] == "Hello from the test chatflow", parameters
    assert parameters["user_input_form"][0]["text-input"]["variable"] == "topic"

    unknown = chat.create_chat_message({"topic": "rust"}, "x", USER, conversation_id=str(uuid.uuid4()))
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found", unknown.text
    print("official sdk checks passed")


if __name__ == "__main__":
    main()
