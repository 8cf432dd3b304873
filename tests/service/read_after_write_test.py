"""A client reads right after it writes: with the published Dify SDK (`dify-python-sdk`, module
`dify_client`) unchanged, every run is looked up the moment its answer arrives, on the server
that ran it and on another replica. Dify writes the run before it answers, so a client may do
this; a 404 here means an answered run was not yet stored.

Environment: FLOWGATE_URLS (JSON list of http://host:port, all serving one database),
FLOWGATE_KEY (a bench10-noio app's key), FLOWGATE_ROOT (the repository),
FLOWGATE_BLOCKING / FLOWGATE_STREAMED (how many runs of each).
"""

import json
import os
import uuid

from dify_client import WorkflowClient
from dify_client.exceptions import DifyClientError

URLS = json.loads(os.environ["FLOWGATE_URLS"])
KEY = os.environ["FLOWGATE_KEY"]
ROOT = os.environ["FLOWGATE_ROOT"]
BLOCKING = int(os.environ.get("FLOWGATE_BLOCKING", "200"))
STREAMED = int(os.environ.get("FLOWGATE_STREAMED", "50"))
USER = f"raw-{uuid.uuid4().hex[:8]}"


def case(case_id):
    with open(os.path.join(ROOT, "tests/conformance/cases.jsonl"), encoding="utf-8") as file:
        for line in file:
            found = json.loads(line)
            if found["id"] == case_id:
                return found.get("inputs") or {}
    raise KeyError(case_id)


with open(os.path.join(ROOT, "tests/conformance/expected/bench10-noio-long-path.json"), encoding="utf-8") as file:
    OUTPUTS = json.load(file)["outputs"]
INPUTS = case("bench10-noio-long-path")
clients = [WorkflowClient(api_key=KEY, base_url=url + "/v1", max_retries=0) for url in URLS]
missing = []


def look_up(run_id, how):
    """The run, read at once from every server."""
    for index, reader in enumerate(clients):
        try:
            result = reader.get_result(run_id).json()
        except DifyClientError as error:
            missing.append(f"{how} run {run_id} on server {index}: {error.status_code} {error.response}")
            continue
        if result.get("status") != "succeeded" or result.get("outputs") != OUTPUTS:
            missing.append(f"{how} run {run_id} on server {index}: {result}")


for attempt in range(BLOCKING):
    writer = clients[attempt % len(clients)]
    answer = writer.run(INPUTS, response_mode="blocking", user=USER).json()
    assert answer["data"]["status"] == "succeeded", answer
    look_up(answer["workflow_run_id"], "blocking")

for attempt in range(STREAMED):
    writer = clients[attempt % len(clients)]
    response = writer.run(INPUTS, response_mode="streaming", user=USER)
    run_id = None
    for line in response.iter_lines():
        line = line.decode() if isinstance(line, bytes) else line
        if not line.startswith("data: "):
            continue
        event = json.loads(line[len("data: "):])
        if event["event"] == "workflow_started":
            run_id = event["workflow_run_id"]
        if event["event"] == "workflow_finished":
            assert event["data"]["status"] == "succeeded", event
            look_up(run_id, "streamed")
            break
    else:
        raise AssertionError("the stream ended without workflow_finished")

assert not missing, f"{len(missing)} lookups right after the answer failed:\n" + "\n".join(missing[:10])
print(f"{BLOCKING} blocking and {STREAMED} streamed runs, each read at once on {len(clients)} servers: all found")
