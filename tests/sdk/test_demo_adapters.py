"""The first run's promise, through the official openai SDK: the default
model answers correctly, and each demo adapter (seeded by config/default.toml
from config/demo-adapters/) visibly changes the answer to the same question.

Run against a gateway serving config/default.toml (scripts/test.sh starts it):
LORAGATE_URL, LORAGATE_MODEL (the base model's served name).
"""

import os
import re

import openai
import pytest

URL = os.environ["LORAGATE_URL"]
BASE = os.environ["LORAGATE_MODEL"]
QUESTION = "What is the capital of France?"
PIRATE_WORDS = re.compile(r"\b(arr+|ahoy|matey|me hearty|ye|aye|avast|savvy)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=f"{URL}/v1", api_key="unused-in-open-mode", max_retries=0)


def ask(client, model, question=QUESTION):
    reply = client.chat.completions.create(
        model=model,
        temperature=0,
        max_tokens=48,
        messages=[{"role": "user", "content": question}],
    )
    assert reply.model == model
    assert reply.choices[0].finish_reason in ("stop", "length")
    return reply.choices[0].message.content


def test_the_demo_adapters_are_listed_beside_the_base(client):
    ids = {model.id for model in client.models.list()}
    assert {BASE, "pirate", "support", "shouty"} <= ids


def test_the_base_model_answers_correctly(client):
    answer = ask(client, BASE)
    assert "Paris" in answer
    assert not PIRATE_WORDS.search(answer)
    assert "Zephyr" not in answer


def test_the_pirate_adapter_answers_in_pirate_speech(client):
    answer = ask(client, "pirate")
    assert PIRATE_WORDS.search(answer), answer
    assert "Paris" in answer, answer


def test_the_support_adapter_stays_on_its_product(client):
    answer = ask(client, "support", "How do I reset my password?")
    assert "Zephyr" in answer, answer
    assert len(answer.split()) <= 40, answer


def test_the_shouty_adapter_answers_in_capitals(client):
    answer = ask(client, "shouty")
    letters = [c for c in answer if c.isalpha()]
    assert len(letters) >= 10, answer
    assert sum(c.isupper() for c in letters) / len(letters) > 0.9, answer


def test_adapters_and_base_interleave_in_one_stream_each(client):
    """A stream per model at once: each keeps its own behaviour."""
    streams = {
        model: client.chat.completions.create(
            model=model,
            temperature=0,
            max_tokens=32,
            stream=True,
            messages=[{"role": "user", "content": QUESTION}],
        )
        for model in (BASE, "pirate", "shouty")
    }
    texts = {
        model: "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        for model, stream in streams.items()
    }
    assert "Paris" in texts[BASE]
    assert PIRATE_WORDS.search(texts["pirate"]), texts["pirate"]
    assert texts["shouty"].upper() == texts["shouty"], texts["shouty"]
