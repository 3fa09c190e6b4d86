#!/usr/bin/env python3
"""One load client for any OpenAI-compatible server (Yap, llama.cpp's llama-server): streams
/v1/chat/completions and measures TTFT (cold and warm prefix), per-stream and aggregate decode
tokens/s. Python standard library only (it runs on the bare GPU machine too).

Workload: CONCURRENCY users, each running CYCLES back-to-back cycles of two turns:
  cold  a new conversation: [system: a unique session line + a ~300-token persona, user: Q]
        (the unique first line means no server can reuse another user's prefix; with
        --shared-persona the persona comes first, as when one companion app serves many users);
  warm  the follow-up: [system, user: Q, assistant: the cold reply, user: Q2], whose prefix
        (system + Q) the server has cached from the cold turn.
Users start evenly spread over --stagger-s seconds (a steady state of arrivals, not one burst).
Greedy sampling, fixed max_tokens; the completion token count comes from the final usage chunk.

Prints one JSON object: per phase (cold, warm) TTFT p50/p95/p99, per-stream decode tokens/s
(tokens after the first over the time after the first), and for the whole run the aggregate
completion tokens/s (all tokens over the wall time from the first request to the last byte).
"""

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from urllib.parse import urlparse

PERSONA = (
    "You are Juniper, a warm and curious voice companion who lives in the user's phone. You speak "
    "in short, natural sentences, the way a close friend talks on a late evening walk. You never "
    "use lists, headings, emoji or markdown, because everything you say is read aloud by a speech "
    "engine. You remember what the user told you earlier in the conversation and you bring it up "
    "when it matters. You are honest when you do not know something, and you say so plainly "
    "instead of guessing. You like astronomy, old maps, cooking on a budget, long-distance running "
    "and the history of everyday objects such as the pencil, the zipper and the paper clip. When "
    "the user sounds stressed you slow down, ask one gentle question and give them room to answer. "
    "When the user is excited you match their energy for a moment and then help them turn the "
    "excitement into a next step. You never lecture. You keep answers under three sentences unless "
    "the user asks for a story or a detailed explanation, and even then you pause to check that "
    "they want more. You avoid medical, legal and financial advice beyond common sense, and you "
    "suggest a professional when the stakes are high. You use the user's name sparingly. You can "
    "joke, but never at the user's expense. If the user switches language you follow them. If the "
    "line is noisy and a sentence seems cut off, you ask them to repeat the last part. "
)
QUESTIONS = [
    "Tell me something surprising about the history of the paper clip.",
    "I have rice, eggs and half an onion. What could I cook tonight?",
    "Why do runners hit a wall around the twentieth mile?",
    "How did sailors find their way before satellites existed?",
    "What makes a good bedtime story for a five year old?",
    "Can you explain why the sky turns red at sunset?",
]
FOLLOW_UPS = ["Interesting. Tell me more about that.", "And what happened next?"]


def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    rank = max(1, min(len(v), int(-(-p * len(v) // 100))))
    return v[rank - 1]


def stats(values):
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values),
    }


class Http:
    """A minimal HTTP/1.1 client: one connection per request (chunked or sized bodies)."""

    def __init__(self, url, api_key):
        u = urlparse(url)
        self.host, self.port = u.hostname, u.port or 80
        self.base = u.path.rstrip("/")
        self.api_key = api_key
        self.reader = self.writer = None

    async def _connect(self):
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    async def post_stream(self, path, body):
        """Sends a POST; yields (status, time, line) for every body line as it arrives."""
        await self.close()
        await self._connect()
        data = json.dumps(body).encode()
        head = (
            f"POST {self.base}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {self.api_key}\r\nConnection: close\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        await self.writer.drain()
        status = await self.reader.readline()
        headers = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        code = int(status.split()[1]) if len(status.split()) > 1 else 0
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        length = int(headers["content-length"]) if "content-length" in headers else None
        buf = b""
        async for piece in self._body(chunked, length):
            buf += piece
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield code, time.perf_counter(), line.decode(errors="replace").rstrip("\r")
        if buf:
            yield code, time.perf_counter(), buf.decode(errors="replace")
        await self.close()

    async def _body(self, chunked, length):
        if chunked:
            while True:
                size_line = await self.reader.readline()
                if not size_line:
                    return
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await self.reader.readline()
                    return
                chunk = await self.reader.readexactly(size)
                await self.reader.readexactly(2)
                yield chunk
        elif length is not None:
            left = length
            while left > 0:
                chunk = await self.reader.read(min(left, 65536))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk
        else:
            while True:
                chunk = await self.reader.read(65536)
                if not chunk:
                    await self.close()
                    return
                yield chunk


async def turn(http, args, messages):
    """One streamed completion; returns its measurements."""
    body = {
        "model": args.model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
        "top_k": 1,
        "top_p": 1.0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "repeat_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": 1,
        "cache_prompt": True,
    }
    t0 = time.perf_counter()
    first = last = None
    chunks, text, usage, code, err = 0, [], None, 0, None
    try:
        async for code, t, line in http.post_stream("/v1/chat/completions", body):
            if code != 200:
                err = f"HTTP {code}: {line[:200]}"
                continue
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            obj = json.loads(payload)
            if obj.get("usage"):
                usage = obj["usage"]
            for ch in obj.get("choices") or []:
                piece = (ch.get("delta") or {}).get("content")
                if piece:
                    chunks += 1
                    text.append(piece)
                    first = first or t
                    last = t
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        err = f"{type(e).__name__}: {e}"
        await http.close()
    end = time.perf_counter()
    tokens = (usage or {}).get("completion_tokens", chunks)
    details = (usage or {}).get("prompt_tokens_details") or {}
    out = {
        "ok": err is None and first is not None,
        "error": err,
        "ttft_ms": (first - t0) * 1000 if first else None,
        "total_ms": (end - t0) * 1000,
        "completion_tokens": tokens,
        "prompt_tokens": (usage or {}).get("prompt_tokens"),
        "cached_tokens": details.get("cached_tokens"),
        "text": "".join(text),
    }
    if first and last and last > first and tokens > 1:
        out["decode_tps"] = (tokens - 1) / (last - first)
    return out


async def user(idx, args, results, run_tag):
    await asyncio.sleep(args.stagger_s * idx / max(1, args.concurrency))
    http = Http(args.url, args.api_key)
    rng = random.Random(f"{run_tag}-{idx}")
    try:
        for cycle in range(args.cycles):
            line = f"Session {run_tag}-{idx}-{cycle}-{rng.getrandbits(48):012x}. "
            # --shared-persona: every user's system prompt starts with the same persona (one
            # companion app, many users), which a server may reuse across conversations.
            system = PERSONA + line if args.shared_persona else line + PERSONA
            q = QUESTIONS[(idx + cycle) % len(QUESTIONS)]
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": q}]
            cold = await turn(http, args, msgs)
            cold["phase"] = "cold"
            results.append(cold)
            if args.no_warm:
                continue
            msgs = msgs + [
                {"role": "assistant", "content": cold["text"] or "Sure."},
                {"role": "user", "content": FOLLOW_UPS[cycle % len(FOLLOW_UPS)]},
            ]
            warm = await turn(http, args, msgs)
            warm["phase"] = "warm"
            results.append(warm)
    finally:
        await http.close()


def summary(results, wall_s, args):
    out = {"concurrency": args.concurrency, "cycles": args.cycles, "max_tokens": args.max_tokens,
           "wall_s": wall_s, "label": args.label}
    ok = [r for r in results if r["ok"]]
    out["turns"] = len(results)
    out["errors"] = len(results) - len(ok)
    out["error_samples"] = [r["error"] for r in results if not r["ok"]][:3]
    tokens = sum(r["completion_tokens"] or 0 for r in ok)
    out["completion_tokens"] = tokens
    out["aggregate_tps"] = tokens / wall_s if wall_s > 0 else None
    for phase in ("cold", "warm"):
        rs = [r for r in ok if r["phase"] == phase]
        out[phase] = {
            "ttft_ms": stats([r["ttft_ms"] for r in rs]),
            "decode_tps": stats([r["decode_tps"] for r in rs if "decode_tps" in r]),
            "completion_tokens_mean": statistics.fmean([r["completion_tokens"] for r in rs]) if rs else None,
            "prompt_tokens_mean": statistics.fmean([r["prompt_tokens"] for r in rs if r["prompt_tokens"]]) if rs else None,
            "cached_tokens_mean": statistics.fmean([r["cached_tokens"] for r in rs if r["cached_tokens"] is not None])
            if any(r["cached_tokens"] is not None for r in rs) else None,
        }
    return out


async def main_async(args):
    results = []
    run_tag = f"{random.getrandbits(32):08x}"
    t0 = time.perf_counter()
    await asyncio.gather(*(user(i, args, results, run_tag) for i in range(args.concurrency)))
    wall = time.perf_counter() - t0
    return summary(results, wall, args)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--api-key", default="bench")
    p.add_argument("--model", default="bench")
    p.add_argument("-c", "--concurrency", type=int, default=1)
    p.add_argument("--cycles", type=int, default=2, help="cold+warm cycles per user")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--stagger-s", type=float, default=1.0, help="spread of the users' starts")
    p.add_argument("--no-warm", action="store_true", help="cold turns only")
    p.add_argument(
        "--shared-persona",
        action="store_true",
        help="the persona first and the unique line after it (a prefix shared by all users)",
    )
    p.add_argument("--label", default="")
    args = p.parse_args()
    out = asyncio.run(main_async(args))
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
