"""Drives flowgate's OpenAI-compatible endpoint with OpenAI's own Python SDK (`openai` 3.57.0),
used unchanged. The upstreams are mock servers the Rust test started and scripted:

- model `main`: answers "The mock says hello."
- model `flaky`: its first target always answers 503, its second "Served by the backup."
- model `limited`: its only target answers 429 with Retry-After: 7.

Environment: FLOWGATE_URL (http://host:port), FLOWGATE_GATEWAY_KEY.
"""

import os

import openai
from openai import OpenAI

BASE = os.environ["FLOWGATE_URL"] + "/v1"
KEY = os.environ["FLOWGATE_GATEWAY_KEY"]


def main():
    client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0)

    answer = client.chat.completions.create(model="main", messages=[{"role": "user", "content": "Say hello"}], temperature=0.3, max_tokens=20)
    assert answer.choices[0].message.content == "The mock says hello.", answer
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "main"
    # "Say hello" is 9 characters: the mock counts 3 prompt tokens, 4 completion tokens.
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (3, 4, 7), answer.usage

    # Streaming without include_usage: the text arrives in pieces and no usage chunk comes.
    chunks = list(client.chat.completions.create(model="main", messages=[{"role": "user", "content": "Say hello"}], stream=True))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "The mock says hello.", text
    assert len([chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]) == 4, chunks
    assert all(chunk.usage is None for chunk in chunks), "usage was not asked for"
    assert chunks[-1].choices[0].finish_reason == "stop"

    # With include_usage the last chunk carries it and no choices.
    chunks = list(
        client.chat.completions.create(
            model="main", messages=[{"role": "user", "content": "Say hello"}], stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 7, chunks[-1]

    # A failing target is invisible to the client.
    for _ in range(3):
        answer = client.chat.completions.create(model="flaky", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "Served by the backup.", answer

    # The legacy completions API: the prompt goes to the upstream's /completions as text and
    # the answer comes back as choices[0].text, streamed or not.
    completion = client.completions.create(model="main", prompt="Once upon a time", max_tokens=20)
    assert completion.object == "text_completion", completion
    assert completion.choices[0].text == "The mock says hello.", completion
    # "Once upon a time" is 16 characters: the mock counts 4 prompt tokens.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 4), completion.usage
    chunks = list(client.completions.create(model="main", prompt=["Once upon a time"], stream=True, stream_options={"include_usage": True}))
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == "The mock says hello.", chunks
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-1].usage.total_tokens == 8, chunks[-2:]
    try:
        client.completions.create(model="main", prompt=["one", "two"])
        raise AssertionError("several prompts at once are refused, not half answered")
    except openai.BadRequestError as error:
        assert "not supported yet" in str(error), error

    embeddings = client.embeddings.create(model="main", input=["first", "second"])
    assert len(embeddings.data) == 2 and len(embeddings.data[0].embedding) == 8, embeddings
    assert embeddings.model == "main"

    assert "main" in [model.id for model in client.models.list()]
    retrieved = client.models.retrieve("main")
    assert (retrieved.id, retrieved.object) == ("main", "model"), retrieved
    try:
        client.models.retrieve("nope")
        raise AssertionError("an unknown model must be refused")
    except openai.NotFoundError as error:
        assert error.code == "model_not_found", error

    try:
        client.chat.completions.create(model="limited", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("a 429 upstream must surface as a rate limit")
    except openai.RateLimitError as error:
        assert error.response.headers["retry-after"] == "7", error.response.headers

    try:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("an unknown model must be refused")
    except openai.NotFoundError as error:
        assert error.code == "model_not_found", error

    try:
        OpenAI(base_url=BASE, api_key="wrong-key-0123456789", max_retries=0).models.list()
        raise AssertionError("a wrong key must be refused")
    except openai.AuthenticationError as error:
        assert error.code == "invalid_api_key", error

    try:
        client.chat.completions.create(model="main", messages=[])
        raise AssertionError("empty messages must be refused")
    except openai.BadRequestError as error:
        assert "messages" in str(error), error

    print("openai SDK: all checks passed")


if __name__ == "__main__":
    main()
