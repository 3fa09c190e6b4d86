"""Memory of a live `yap serve` (issue 10): RSS idle, per idle connection, at the peak of a burst
of large turns, and after the clients leave. Prints one JSON line.

Usage: python3 scripts/mem-bursts.py --url ws://127.0.0.1:PORT/ws --key KEY --pid PID
"""

import argparse
import asyncio
import json
import time

from websockets.asyncio.client import connect


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


async def idle_connections(url, n):
    conns = []
    for _ in range(n):
        ws = await connect(url, max_size=None)
        await ws.send('{"type":"ping"}')
        await ws.recv()
        conns.append(ws)
    return conns


async def burst_client(url, idx, turns, history):
    async with connect(url, max_size=None) as ws:
        for t in range(turns):
            msg = {"type": "start", "session_id": f"burst-{idx}-{t}", "user_utterance": "tell me more " * 20,
                   "history_text": history, "sampling": {"temperature": 0.8}}
            await ws.send(json.dumps(msg))
            while True:
                f = json.loads(await ws.recv())
                if f["type"] in ("done", "error"):
                    break


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--idle", type=int, default=500)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--turns", type=int, default=6)
    a = p.parse_args()
    url = f"{a.url}?api_key={a.key}"
    out = {"baseline_mb": rss_mb(a.pid)}
    conns = await idle_connections(url, a.idle)
    await asyncio.sleep(1)
    out["idle_conns"] = a.idle
    out["idle_mb"] = rss_mb(a.pid)
    out["kb_per_idle_conn"] = round((out["idle_mb"] - out["baseline_mb"]) * 1024 / a.idle, 1)
    for ws in conns:
        await ws.close()
    await asyncio.sleep(2)
    out["after_idle_mb"] = rss_mb(a.pid)
    history = "\n".join(f"User: line {i} " + "blah " * 60 + f"\nAssistant: reply {i} " + "ok " * 60 for i in range(40))
    peak = 0.0
    t0 = time.time()
    tasks = [asyncio.create_task(burst_client(url, i, a.turns, history)) for i in range(a.clients)]
    while not all(t.done() for t in tasks):
        peak = max(peak, rss_mb(a.pid))
        await asyncio.sleep(0.05)
    for t in tasks:
        t.result()
    out["burst_s"] = round(time.time() - t0, 1)
    out["burst_peak_mb"] = peak
    for wait in (1, 5, 15):
        await asyncio.sleep(wait if wait == 1 else wait - (1 if wait == 5 else 5))
        out[f"after_burst_{wait}s_mb"] = rss_mb(a.pid)
    print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}))


if __name__ == "__main__":
    asyncio.run(main())
