"""Drives the basic editor's apps (chat and completion modes) on a running `flowgate serve`
with Dify's official Python SDK (`dify-client` 0.1.10), unchanged. The model behind them is the
repository's mock upstream; FLOWGATE_REPLIES lists, in order, what it was scripted to answer.
The Rust test that runs this checks what reached the model.

Environment: FLOWGATE_URL, FLOWGATE_KEYS (JSON: chat, transcript, expert, completion, agent),
FLOWGATE_REPLIES (JSON list).
"""

import json
import os
import uuid

from dify_client import ChatClient, CompletionClient

BASE = os.environ["FLOWGATE_URL"] + "/v1"
KEYS = json.loads(os.environ["FLOWGATE_KEYS"])
REPLIES = json.loads(os.environ["FLOWGATE_REPLIES"])
USER = f"basic-{uuid.uuid4().hex[:8]}"


def client(kind, key):
    made = kind(key)
    made.base_url = BASE
    return made


def stream_events(response):
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return [json.loads(line[len(b"data: "):]) for line in response.iter_lines() if line.startswith(b"data: ")]


def check_blocking(response, reply, mode):
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["event"] == "message" and answer["mode"] == mode, answer
    assert answer["answer"] == reply, answer
    assert answer["id"] == answer["message_id"], answer
    assert answer["metadata"]["usage"]["total_tokens"] > 0, answer
    return answer


def check_stream(events, reply, conversation_id):
    # A basic-editor app streams its answer and the end, and none of the workflow's events.
    assert {event["event"] for event in events} == {"message", "message_end"}, events
    assert events[-1]["event"] == "message_end", events[-1]
    assert events[-1]["metadata"]["usage"]["total_tokens"] > 0, events[-1]
    assert "".join(event["answer"] for event in events if event["event"] == "message") == reply
    message_ids = {event["message_id"] for event in events}
    assert len(message_ids) == 1, events
    for event in events:
        assert event["task_id"] and event["created_at"], event
        if conversation_id is None:
            assert "conversation_id" not in event, event
        else:
            assert event["conversation_id"] == conversation_id, event


def main():
    chat = client(ChatClient, KEYS["chat"])
    parameters = chat.get_application_parameters(USER).json()
    assert parameters["opening_statement"] == "Ahoy, matey!", parameters
    assert parameters["suggested_questions"] == ["Where is the treasure?"], parameters
    assert parameters["user_input_form"][0]["text-input"]["variable"] == "persona", parameters

    first = check_blocking(chat.create_chat_message({"persona": "a pirate {{x}}"}, "Ahoy", USER), REPLIES[0], "chat")
    conversation_id = first["conversation_id"]
    events = stream_events(
        chat.create_chat_message({"persona": "ignored later"}, "Where is it?", USER, "streaming", conversation_id)
    )
    check_stream(events, REPLIES[1], conversation_id)
    messages = chat.get_conversation_messages(USER, conversation_id=conversation_id).json()
    assert [(message["query"], message["answer"]) for message in messages["data"]] == [
        ("Ahoy", REPLIES[0]),
        ("Where is it?", REPLIES[1]),
    ], messages
    missing = chat.create_chat_message({}, "Ahoy", USER)
    assert missing.status_code == 400 and "persona is required" in missing.json()["message"], missing.text

    transcript = client(ChatClient, KEYS["transcript"])
    first = check_blocking(transcript.create_chat_message({}, "Hi", USER), REPLIES[2], "chat")
    check_blocking(transcript.create_chat_message({}, "Again", USER, conversation_id=first["conversation_id"]), REPLIES[3], "chat")

    expert = client(ChatClient, KEYS["expert"])
    check_blocking(expert.create_chat_message({}, "Bonjour", USER), REPLIES[4], "chat")

    completion = client(CompletionClient, KEYS["completion"])
    answer = check_blocking(completion.create_completion_message({"lang": "French", "text": "hello"}, "blocking", USER), REPLIES[5], "completion")
    assert "conversation_id" not in answer, answer
    events = stream_events(completion.create_completion_message({"lang": "French", "text": "bye"}, "streaming", USER))
    check_stream(events, REPLIES[6], None)
    agent = client(ChatClient, KEYS["agent"])
    events = stream_events(agent.create_chat_message({"topic": "Rust"}, "Hi agent", USER, "streaming"))
    # One round without tools: an empty thought, the answer as agent_message, the thought
    # holding the answer, then the end (Dify's function-calling agent runner).
    assert [event["event"] for event in events[:1]] == ["agent_thought"], events
    assert events[0]["thought"] == "" and events[0]["position"] == 1, events[0]
    assert {event["event"] for event in events[1:-2]} == {"agent_message"}, events
    assert "".join(event["answer"] for event in events if event["event"] == "agent_message") == REPLIES[7]
    assert events[-2]["event"] == "agent_thought" and events[-2]["id"] == events[0]["id"], events[-2]
    assert events[-2]["thought"] == REPLIES[7] and events[-2]["tool"] == "", events[-2]
    assert events[-1]["event"] == "message_end", events[-1]
    conversation_id = events[-1]["conversation_id"]
    assert all(event["conversation_id"] == conversation_id for event in events), events
    answer = check_blocking(agent.create_chat_message({}, "And again", USER, conversation_id=conversation_id), REPLIES[8], "agent-chat")
    assert answer["conversation_id"] == conversation_id
    history = agent.get_conversation_messages(USER, conversation_id=conversation_id).json()["data"]
    thoughts = [message["agent_thoughts"] for message in history]
    assert [len(items) for items in thoughts] == [1, 1], history
    assert thoughts[0][0]["id"] == events[0]["id"] and thoughts[0][0]["thought"] == REPLIES[7], thoughts
    assert thoughts[0][0]["message_id"] == history[0]["id"] and thoughts[0][0]["position"] == 1, thoughts
    assert thoughts[1][0]["thought"] == REPLIES[8], thoughts

    on_chat_route = completion._send_request("POST", "/chat-messages", {"inputs": {}, "query": "x", "user": USER})
    assert on_chat_route.status_code == 400 and on_chat_route.json()["code"] == "not_chat_app", on_chat_route.text
    print("basic app checks passed")


if __name__ == "__main__":
    main()
