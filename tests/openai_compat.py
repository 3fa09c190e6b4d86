"""The OpenAI-compatible API checked with the official `openai` Python package.

Run by scripts/openai-compat.sh against a live `yap serve` on the generated tiny model.
Env: YAP_BASE_URL (http://host:port/v1), YAP_API_KEY.
"""
import json
import os
import time
import traceback
import urllib.error
import urllib.request

import openai
from openai import OpenAI

BASE = os.environ["YAP_BASE_URL"]
KEY = os.environ["YAP_API_KEY"]
client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=60)
MSGS = [
    {"role": "system", "content": "You are a kind companion."},
    {"role": "user", "content": "Hello there, how are you?"},
]
TESTS = []


def test(f):
    TESTS.append(f)
    return f


def healthz():
    with urllib.request.urlopen(BASE.replace("/v1", "/healthz")) as r:
        return json.load(r)


@test
def chat_non_streaming():
    r = client.chat.completions.create(model="yap", messages=MSGS, max_tokens=12, temperature=0.7)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


@test
def chat_streaming_with_usage():
    chunks = list(
        client.chat.completions.create(
            model="yap", messages=MSGS, max_tokens=10, stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"], finishes
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


@test
def completions_plain_and_streaming():
    r = client.completions.create(model="yap", prompt="Once upon a time", max_tokens=8)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens == 8
    parts = list(client.completions.create(model="yap", prompt="Once upon a time", max_tokens=6, stream=True))
    assert "".join(p.choices[0].text for p in parts)
    assert parts[-1].choices[0].finish_reason == "length"


@test
def models_list():
    m = client.models.list()
    assert len(m.data) == 1 and m.data[0].id.endswith(".gguf")


@test
def yap_sampling_extras_and_stop():
    r = client.chat.completions.create(
        model="yap", messages=MSGS, max_tokens=8, temperature=0.9, top_p=0.95,
        presence_penalty=0.3, frequency_penalty=0.2, seed=7, stop=["\n\n"],
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    assert r.usage.completion_tokens <= 8


@test
def repeated_prefix_is_cached():
    msgs = [{"role": "system", "content": "You are a pirate who loves the sea and gold."},
            {"role": "user", "content": "Where is the treasure buried?"}]
    client.chat.completions.create(model="yap", messages=msgs, max_tokens=4)
    r = client.chat.completions.create(model="yap", messages=msgs, max_tokens=4)
    assert r.usage.prompt_tokens_details.cached_tokens > 0, r.usage


@test
def errors_have_openai_shape():
    bad = OpenAI(base_url=BASE, api_key="wrong", max_retries=0)
    try:
        bad.chat.completions.create(model="yap", messages=MSGS)
        raise AssertionError("no 401")
    except openai.AuthenticationError as e:
        assert e.status_code == 401 and e.body["code"] == "invalid_api_key"
    for kwargs in ({"temperature": 5}, {"messages": []}, {"max_tokens": 10**7}):
        args = {"model": "yap", "messages": MSGS, **kwargs}
        try:
            client.chat.completions.create(**args)
            raise AssertionError(f"no 400 for {kwargs}")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.body["type"] == "invalid_request_error", e.body
    try:
        client.get("/nope", cast_to=object)
        raise AssertionError("no 404")
    except openai.NotFoundError as e:
        assert e.status_code == 404


@test
def sse_headers_and_done_marker():
    req = urllib.request.Request(
        BASE + "/chat/completions",
        data=json.dumps({"model": "yap", "messages": MSGS, "max_tokens": 3, "stream": True}).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        assert r.headers["Cache-Control"] == "no-cache"
        assert r.headers["X-Accel-Buffering"] == "no"
        assert r.headers["Content-Type"].startswith("text/event-stream")
        body = r.read().decode()
    events = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events[-3:]


@test
def at_capacity_is_429():
    # The server under test has MAX_CONCURRENT_CONNECTIONS=2: hold both slots with streams.
    held = [client.chat.completions.create(model="yap", messages=MSGS, max_tokens=4000, stream=True)
            for _ in range(2)]
    for s in held:
        next(iter(s))
    try:
        client.chat.completions.create(model="yap", messages=MSGS, max_tokens=2)
        raise AssertionError("no 429")
    except openai.RateLimitError as e:
        assert e.status_code == 429 and e.body["type"] == "rate_limit_error", e.body
        assert e.response.headers.get("retry-after") == "1"
    finally:
        for s in held:
            s.close()
    deadline = time.time() + 3
    while healthz()["connections"]["active"] != 0:
        assert time.time() < deadline, "slots not returned after the streams closed"
        time.sleep(0.02)


@test
def client_disconnect_aborts_generation():
    stream = client.chat.completions.create(model="yap", messages=MSGS, max_tokens=4000, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert healthz()["engine_stats"]["active_generations"] >= 1
    stream.close()
    deadline = time.time() + 3
    while healthz()["engine_stats"]["active_generations"] != 0:
        assert time.time() < deadline, "generation kept running after the client left"
        time.sleep(0.02)


def main():
    passed = failed = 0
    for t in TESTS:
        try:
            t()
            passed += 1
            print(f"ok     {t.__name__}")
        except Exception:
            failed += 1
            print(f"FAILED {t.__name__}")
            traceback.print_exc()
    print(f"openai: {passed} passed, {failed} failed")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
