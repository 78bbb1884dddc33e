"""The official `openai` Python SDK, unmodified, against a running gateway.

Run by scripts/test.sh with LORAGATE_URL (base URL) and LORAGATE_MODEL set.
"""

import os

import openai
import pytest

BASE_URL = os.environ["LORAGATE_URL"] + "/v1"
MODEL = os.environ["LORAGATE_MODEL"]
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=BASE_URL, api_key="unused-until-tenants", max_retries=0, timeout=300)


def test_plain_chat_answers_and_echoes_the_model(client):
    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    assert completion.model == MODEL
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert "Paris" in choice.message.content, choice.message.content
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_greedy_decoding_is_deterministic(client):
    answers = [
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0)
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert answers[0] == answers[1]


def test_streaming_with_include_usage(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text, text
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished in (["stop"], ["length"])
    non_streamed = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    assert text == non_streamed.choices[0].message.content


def test_unknown_model_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="no-such-model", messages=QUESTION, max_tokens=4)
    assert error.value.status_code == 404
    assert error.value.code == "model_not_found"


def test_invalid_parameter_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=9)
    assert error.value.param == "temperature"


def test_context_overflow_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=100_000)
    assert error.value.code == "context_length_exceeded"


def test_models_list_and_retrieve(client):
    # The base first; then the caller's adapters (the default config seeds
    # the demo adapters for the open-mode caller).
    ids = [m.id for m in client.models.list()]
    assert ids[0] == MODEL and ids.count(MODEL) == 1, ids
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
