"""Tool calls and the Responses API with the official `openai` Python SDK,
unmodified, against a running gateway.

Run by scripts/test.sh with LORAGATE_URL and LORAGATE_MODEL set; with
LORAGATE_MOCK_UPSTREAM=1 the gateway relays to `mock-upstream`, which calls
the first tool itself and reports log probabilities.
"""

import json
import os

import openai
import pytest

BASE_URL = os.environ["LORAGATE_URL"] + "/v1"
MODEL = os.environ["LORAGATE_MODEL"]
MOCK = os.environ.get("LORAGATE_MOCK_UPSTREAM") == "1"
CITIES = ["Paris", "Tokyo", "Lima"]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather forecast for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": CITIES},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=BASE_URL, api_key="unused", max_retries=0, timeout=300)


def check_arguments(name, arguments):
    """The arguments validate against the function's schema."""
    args = json.loads(arguments)
    if name == "get_weather":
        assert set(args) == {"city", "days"}, args
        assert args["city"] in CITIES and isinstance(args["days"], int) and 1 <= args["days"] <= 7, args
    else:
        assert name == "get_time" and args in ({"zone": "UTC"}, {"zone": "CET"}), (name, args)


CHOICES = [
    pytest.param({"type": "function", "function": {"name": "get_weather"}}, id="named"),
    pytest.param("required", id="required"),
]


@pytest.mark.parametrize("tool_choice", CHOICES)
def test_forced_call(client, tool_choice):
    completion = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER, TIME], tool_choice=tool_choice,
        max_tokens=96, temperature=0,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert len(calls) == 1, calls
    assert calls[0].type == "function" and calls[0].id.startswith("call_")
    if isinstance(tool_choice, dict) or MOCK:
        assert calls[0].function.name == "get_weather"
    check_arguments(calls[0].function.name, calls[0].function.arguments)


@pytest.mark.parametrize("tool_choice", CHOICES)
def test_forced_call_streamed(client, tool_choice):
    with client.chat.completions.stream(
        model=MODEL, messages=QUESTION, tools=[WEATHER, TIME], tool_choice=tool_choice,
        max_tokens=96, temperature=0,
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_")
    check_arguments(call.function.name, call.function.arguments)
    # The raw stream, as `create(stream=True)` yields it.
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER, TIME], tool_choice=tool_choice,
        max_tokens=96, temperature=0, stream=True,
    ))
    pieces = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert pieces[0].id and pieces[0].function.name and pieces[0].index == 0
    arguments = "".join(p.function.arguments or "" for p in pieces)
    check_arguments(pieces[0].function.name, arguments)


def test_tool_round_trip(client):
    first = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=96, temperature=0,
    )
    message = first.choices[0].message
    call = message.tool_calls[0]
    history = QUESTION + [
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"forecast": "sunny", "high_c": 24})},
    ]
    answer = client.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], tool_choice="none", max_tokens=24, temperature=0,
    )
    choice = answer.choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    if MOCK:
        assert choice.message.content.endswith(f"tool {call.id} said " + history[-1]["content"])


def test_responses_create(client):
    response = client.responses.create(
        model=MODEL, instructions="Answer in one short sentence.",
        input="What is the capital of France?", max_output_tokens=24, temperature=0,
    )
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.output_text
    assert response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    if not MOCK:
        assert "Paris" in response.output_text, response.output_text


def test_responses_stream(client):
    events = list(client.responses.create(
        model=MODEL, input="What is the capital of France?", max_output_tokens=24, temperature=0, stream=True,
    ))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete"), kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text
    final = events[-1].response
    assert final.output_text == text
    assert final.usage.output_tokens > 0
    # The SDK's stream helper, which assembles function calls from their
    # argument deltas (and wants `response.completed`, which a forced call,
    # ending on its own, reaches).
    tool = {"type": "function", **WEATHER["function"]}
    with client.responses.stream(
        model=MODEL, input="Weather in Lima?", tools=[tool], tool_choice="required", max_output_tokens=96,
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.usage.total_tokens > 0
    call = final.output[0]
    assert call.type == "function_call" and call.call_id.startswith("call_")
    check_arguments(call.name, call.arguments)


def test_responses_function_call(client):
    tool = {"type": "function", **WEATHER["function"]}
    response = client.responses.create(
        model=MODEL, input="Weather in Lima?", tools=[tool], tool_choice="required", max_output_tokens=96, temperature=0,
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1, response.output
    check_arguments(calls[0].name, calls[0].arguments)
    follow_up = client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": "Weather in Lima?"}, calls[0],
               {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
        tools=[tool], tool_choice="none", max_output_tokens=16,
    )
    assert follow_up.output_text


def test_stateless_responses_refuse_storage(client):
    for extra in ({"store": True}, {"previous_response_id": "resp_123"}):
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model=MODEL, input="hi", max_output_tokens=4, **extra)
        assert "keeps no responses" in refused.value.message


@pytest.mark.skipif(not MOCK, reason="log probabilities come from the mock replica")
def test_logprobs_pass_through(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=8, logprobs=True, top_logprobs=2,
    )
    entries = completion.choices[0].logprobs.content
    assert entries and all(len(e.top_logprobs) == 2 for e in entries)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=8, logprobs=True, top_logprobs=2, stream=True,
    ))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in entries]


def test_several_choices(client):
    """`n` choices, whole and streamed: the SDK assembles each by its index."""
    ask = dict(model=MODEL, messages=QUESTION, max_tokens=6, temperature=0, n=2)
    whole = client.chat.completions.create(**ask)
    assert [c.index for c in whole.choices] == [0, 1]
    assert all(c.message.content for c in whole.choices)
    if MOCK:
        assert "#1" in whole.choices[1].message.content
        assert "#1" not in whole.choices[0].message.content
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    texts, finishes = {}, {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert finishes == {c.index: c.finish_reason for c in whole.choices}
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (whole.usage.prompt_tokens, whole.usage.completion_tokens)
    if all(c.finish_reason == "length" for c in whole.choices):
        assert whole.usage.completion_tokens == 2 * 6
