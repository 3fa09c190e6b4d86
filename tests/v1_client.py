"""A protocol-v1 client of Yap (shared/docs/protocol-v1.md), written the way today's voice apps
talk to the Python server: it speaks only v1 and asserts the exact frames.

Usage: python3 tests/v1_client.py --url ws://127.0.0.1:PORT/ws --key KEY --mode both|chat|tool

The server must run with WS_IDLE_TIMEOUT_S=2, MAX_CONCURRENT_CONNECTIONS=3 and
WS_MAX_MESSAGES_PER_WINDOW=30 (scripts/v1-client.sh starts it so, once per deploy mode).
"""

import argparse
import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

TIMEOUT = 30
ARGS = None
PASSED = []


def start_msg(**extra):
    msg = {"type": "start", "v": 1}
    if ARGS.mode != "tool":
        msg.update(gender="female", personality="wholesome", chat_prompt="You are Yap, a kind friend. Answer in one short sentence.")
    msg.update(extra)
    return msg


async def ws_connect(key=None, headers=None):
    url = ARGS.url
    hdrs = dict(headers or {})
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    return await connect(url, additional_headers=hdrs, max_size=None)


async def send(ws, msg):
    await ws.send(json.dumps(msg))


async def recv(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def closed(ws):
    """Reads until the close; returns (frames, code, reason)."""
    frames = []
    try:
        while True:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))
    except ConnectionClosed as e:
        rcvd = e.rcvd
        return frames, (rcvd.code if rcvd else None), (rcvd.reason if rcvd else None)


async def turn(ws):
    """Frames of one turn, up to and including done (or an error)."""
    frames = []
    while True:
        f = await recv(ws)
        frames.append(f)
        if f["type"] in ("done", "error"):
            return frames


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name}: {detail}", file=sys.stderr)
        sys.exit(1)


def passed(name):
    PASSED.append(name)
    print(f"ok   {name}")


def assert_turn_shape(name, frames):
    kinds = [f["type"] for f in frames]
    body = frames
    if ARGS.mode in ("both", "tool"):
        check(name, kinds[0] == "tool", kinds)
        tool = frames[0]
        check(name, tool["status"] == 200 and tool["tools"] in ([], [{"name": "take_screenshot"}]), tool)
        check(name, set(tool) == {"type", "status", "tools"}, tool)
        body = frames[1:]
    else:
        check(name, "tool" not in kinds, kinds)
    kinds = [f["type"] for f in body]
    check(name, kinds[-2:] == ["final", "done"], kinds)
    check(name, body[-1] == {"type": "done", "status": 200}, body[-1])
    final = body[-2]
    check(name, set(final) == {"type", "status", "text"} and final["status"] == 200, final)
    tokens = "".join(f["text"] for f in body if f["type"] == "token")
    check(name, all(set(f) == {"type", "text"} for f in body if f["type"] == "token"), body)
    if ARGS.mode == "tool":
        check(name, final["text"] == "" and kinds == ["final", "done"], body)
    else:
        check(name, len(tokens) > 0 and final["text"] == tokens.strip(), (final, tokens))


async def test_session():
    ws = await ws_connect(ARGS.key)
    await send(ws, start_msg(history=[{"role": "user", "content": "hey"}, {"role": "assistant", "content": "hi!"}]))
    check("start", await recv(ws) == {"type": "done", "status": 200})
    passed("start opens the session: done{status:200}, no generation")
    for text in ["how was your day", "look at this picture of my cat", "thanks, you're sweet"]:
        await send(ws, {"type": "message", "v": 1, "user_utterance": text})
        assert_turn_shape("message", await turn(ws))
    passed("three messages: tool?, token*, final{status,text}, done{status:200}")
    await send(ws, {"type": "ping", "v": 1})
    check("ping", await recv(ws) == {"type": "pong"})
    await send(ws, {"type": "pong", "v": 1})
    await send(ws, {"type": "PING", "v": 1})
    check("type is case-insensitive", await recv(ws) == {"type": "pong"})
    passed("ping → pong; pong → nothing; type case-insensitive")
    await send(ws, {"type": "end", "v": 1})
    frames, code, _ = await closed(ws)
    check("end", frames == [{"type": "done", "status": 200}] and code == 1000, (frames, code))
    passed("end → done{status:200}, close 1000")


async def test_barge_in_and_cancel():
    ws = await ws_connect(ARGS.key)
    await send(ws, start_msg())
    await recv(ws)
    await send(ws, {"type": "message", "v": 1, "user_utterance": "tell me a very long story about dragons"})
    await send(ws, {"type": "message", "v": 1, "user_utterance": "actually just say hi"})
    frames = []
    while True:
        f = await recv(ws)
        frames.append(f)
        if f["type"] == "done":
            break
    kinds = [f["type"] for f in frames]
    check("barge-in", "cancelled" not in kinds and "error" not in kinds, kinds)
    check("barge-in", kinds.count("done") == 1 and kinds.count("final") == 1, kinds)
    if ARGS.mode != "chat":
        check("barge-in", kinds.count("tool") in (1, 2), kinds)
    passed("a message during a turn aborts it silently; the new turn ends with final + done")
    await send(ws, {"type": "message", "v": 1, "user_utterance": "one more long story please"})
    await send(ws, {"type": "cancel", "v": 1})
    frames = []
    while True:
        f = await recv(ws)
        frames.append(f)
        if f["type"] in ("cancelled", "done"):
            break
    kinds = [f["type"] for f in frames]
    check("cancel", kinds[-1] in ("cancelled", "done"), kinds)
    if kinds[-1] == "done":  # the turn finished before the cancel arrived: cancel still answers
        check("cancel", await recv(ws) == {"type": "cancelled"})
    await send(ws, {"type": "cancel", "v": 1})
    check("cancel with nothing running", await recv(ws) == {"type": "cancelled"})
    passed("cancel → {type:cancelled} (also when nothing runs)")
    await send(ws, {"type": "message", "v": 1, "user_utterance": "still there?", "temperature": 0.2})
    assert_turn_shape("after cancel", await turn(ws))
    passed("the session goes on after a cancel (message sampling accepted)")
    await ws.close()


async def expect_error(ws, msg, code, status, close=None):
    await ws.send(msg if isinstance(msg, str) else json.dumps(msg))
    f = await recv(ws)
    check(f"error {code}", f.get("type") == "error" and f.get("code") == code and f.get("status") == status, f)
    check(f"error {code} shape", set(f) == {"type", "status", "code", "message"} and "error_code" not in f, f)
    if close is not None:
        frames, c, _ = await closed(ws)
        check(f"error {code} close", c == close, (frames, c))


async def test_errors():
    ws = await ws_connect(ARGS.key)
    await expect_error(ws, {"type": "message", "v": 1, "user_utterance": "hi"}, "invalid_message", 400)
    await expect_error(ws, {"type": "ping", "v": 2}, "invalid_message", 400)
    await expect_error(ws, {"type": "ping", "v": 1, "session_id": "x"}, "invalid_message", 400)
    await expect_error(ws, {"type": "dance", "v": 1}, "invalid_message", 400)
    await expect_error(ws, '{"type": "ping", "v": 1', "invalid_message", 400)
    await send(ws, start_msg())
    await recv(ws)
    await expect_error(ws, start_msg(), "invalid_message", 400)
    await expect_error(ws, {"type": "message", "v": 1, "user_utterance": ""}, "invalid_message", 400)
    await expect_error(ws, {"type": "message", "v": 1}, "invalid_message", 400)
    await expect_error(ws, {"type": "message", "v": 1, "user_utterance": "x", "request_id": "r"}, "invalid_message", 400)
    await ws.close()
    passed("invalid_message 400: message before start, bad v, unknown field, unknown type, bad JSON, second start, empty utterance")
    if ARGS.mode == "tool":
        ws = await ws_connect(ARGS.key)
        await expect_error(ws, {"type": "start", "v": 1, "chat_prompt": "x"}, "invalid_settings", 400, close=1008)
        ws = await ws_connect(ARGS.key)
        await expect_error(ws, {"type": "start", "v": 1, "temperature": 0.5}, "invalid_settings", 400, close=1008)
        passed("tool-only deployment: chat fields → invalid_settings, close 1008")
    else:
        ws = await ws_connect(ARGS.key)
        await expect_error(ws, {"type": "start", "v": 1, "personality": "nerdy", "chat_prompt": "x"}, "invalid_settings", 400, close=1008)
        ws = await ws_connect(ARGS.key)
        await expect_error(ws, start_msg(gender="robot"), "invalid_settings", 400, close=1008)
        ws = await ws_connect(ARGS.key)
        await expect_error(ws, start_msg(personality="not letters!"), "invalid_settings", 400, close=1008)
        ws = await ws_connect(ARGS.key)
        await expect_error(ws, start_msg(check_screen_prefix="x" * 31), "invalid_settings", 400, close=1008)
        ws = await ws_connect(ARGS.key)
        await expect_error(ws, start_msg(sampling={"temperature": 9}), "invalid_payload", 400, close=1008)
        ws = await ws_connect(ARGS.key)
        await expect_error(ws, start_msg(chat_prompt="word " * 5000), "invalid_settings", 400, close=1008)
        passed("chat deployment: missing/bad persona → invalid_settings, bad sampling → invalid_payload, close 1008")
    ws = await ws_connect(ARGS.key)
    # ~4,000 tokens (over CHAT_HISTORY_MAX_TOKENS=3000 in scripts/v1-client.sh) in ~20 kB: under
    # WS_MAX_MESSAGE_BYTES, so the budget, not the message size, refuses it.
    huge = [{"role": "user", "content": "blah " * 400} for _ in range(10)]
    await expect_error(ws, start_msg(history=huge), "text_too_long", 400, close=1008)
    passed("seed history over the budget → text_too_long, close 1008")
    ws = await ws_connect("wrong-key")
    await send(ws, start_msg())
    frames, code, _ = await closed(ws)
    check("auth", code == 1008 and frames and frames[0]["code"] == "authentication_failed" and frames[0]["status"] == 401, (frames, code))
    check("auth shape", "error_code" not in frames[0], frames)
    passed("bad key → error authentication_failed 401 (v1 shape), close 1008")


async def test_rate_limit():
    ws = await ws_connect(ARGS.key)
    await send(ws, start_msg())
    await recv(ws)
    codes = []
    for _ in range(40):
        await send(ws, {"type": "message", "v": 1, "user_utterance": ""})
    for _ in range(40):
        f = await recv(ws)
        codes.append(f.get("code"))
    check("rate limit", "rate_limited" in codes, codes)
    limited = [c for c in codes if c == "rate_limited"]
    check("rate limit", len(limited) >= 5, codes)
    await send(ws, {"type": "ping", "v": 1})
    check("ping is exempt", await recv(ws) == {"type": "pong"})
    await ws.close()
    passed("rate_limited 429 over WS_MAX_MESSAGES_PER_WINDOW; ping exempt; connection stays")


async def test_capacity_and_idle():
    await asyncio.sleep(0.5)  # earlier connections return their slots
    held = []
    for _ in range(3):
        ws = await ws_connect(ARGS.key)
        await send(ws, {"type": "ping", "v": 1})
        await recv(ws)
        held.append(ws)
    extra = await ws_connect(ARGS.key)
    await send(extra, start_msg())
    frames, code, _ = await closed(extra)
    check("capacity", code == 1013 and frames[0]["code"] == "server_at_capacity" and frames[0]["status"] == 503, (frames, code))
    passed("at capacity → server_at_capacity 503, close 1013")
    # The held connections go idle: close 4000 with reason idle_timeout.
    frames, code, reason = await closed(held[0])
    check("idle", code == 4000 and reason == "idle_timeout", (frames, code, reason))
    for ws in held[1:]:
        await closed(ws)
    passed("idle connection → close 4000, reason idle_timeout")


async def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--mode", choices=["both", "chat", "tool"], required=True)
    ARGS = p.parse_args()
    await test_session()
    await test_barge_in_and_cancel()
    await test_errors()
    await test_rate_limit()
    await test_capacity_and_idle()
    print(f"v1 client ({ARGS.mode}): {len(PASSED)} checks passed")


if __name__ == "__main__":
    asyncio.run(main())
