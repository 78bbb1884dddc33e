"""The official `openai` SDK against a gateway with tenants and limits.

Run by scripts/test.sh with LORAGATE_URL, LORAGATE_MODEL and LORAGATE_TENANT_KEY
(a key of a tenant allowed 3 requests per minute).
"""

import os

import openai
import pytest

BASE_URL = os.environ["LORAGATE_URL"] + "/v1"
MODEL = os.environ["LORAGATE_MODEL"]
KEY = os.environ["LORAGATE_TENANT_KEY"]
HELLO = [{"role": "user", "content": "hello"}]


def client(key):
    return openai.OpenAI(base_url=BASE_URL, api_key=key, max_retries=0, timeout=120)


def test_a_wrong_key_raises_authentication_error():
    with pytest.raises(openai.AuthenticationError) as error:
        client("lg-wrong").chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert error.value.status_code == 401
    assert error.value.code == "invalid_api_key"


def test_exhausting_the_limit_raises_rate_limit_error_with_headers():
    tenant = client(KEY)
    raw = tenant.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert raw.headers["x-ratelimit-limit-requests"] == "3"
    assert raw.parse().choices[0].message.role == "assistant"
    with pytest.raises(openai.RateLimitError) as error:
        for _ in range(5):
            tenant.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert error.value.status_code == 429
    assert error.value.code == "rate_limit_exceeded"
    assert int(error.value.response.headers["retry-after"]) >= 1
