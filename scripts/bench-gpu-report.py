#!/usr/bin/env python3
"""Markdown tables from scripts/bench-gpu.sh's results (results.jsonl, ws.jsonl): Yap against
llama-server at each concurrency, as ratios measured in the same run (phase B), the same with
one persona shared by all users (phase S), then Yap's variants alone while llama-server was
building (phase A), then Yap over the WebSocket.

    scripts/bench-gpu-report.py DIR [DIR...]    # the folders holding results.jsonl / ws.jsonl
"""

import json
import sys
from pathlib import Path


def load(dirs, name):
    rows = []
    for d in dirs:
        p = Path(d) / name
        if p.exists():
            rows += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return rows


def f(x, nd=0):
    return "–" if x is None else f"{x:.{nd}f}"


def ratio(a, b, nd=2):
    return "–" if not a or not b else f"{a / b:.{nd}f}×"


def p(d, phase, metric, q):
    return ((d.get(phase) or {}).get(metric) or {}).get(q)


HEAD = ("| streams | server | aggregate tok/s | vs llama-server | per-stream tok/s | "
        "cold TTFT p50 / p95 ms | vs llama-server (p50) | warm TTFT p50 / p95 ms | "
        "warm/cold p50 | prompt tokens cold / warm (cached) | errors | GPU MiB |")


def row(c, r, base):
    cold50, warm50 = p(r, "cold", "ttft_ms", "p50"), p(r, "warm", "ttft_ms", "p50")
    is_base = base is None or r is base
    cached = (r.get("warm") or {}).get("cached_tokens_mean")
    return (
        f"| {c} | {r['server']} | {f(r['aggregate_tps'])} | "
        f"{'–' if is_base else ratio(r['aggregate_tps'], base['aggregate_tps'])} | "
        f"{f(p(r, 'cold', 'decode_tps', 'mean'))} | "
        f"{f(cold50)} / {f(p(r, 'cold', 'ttft_ms', 'p95'))} | "
        f"{'–' if is_base else ratio(cold50, p(base, 'cold', 'ttft_ms', 'p50'))} | "
        f"{f(warm50)} / {f(p(r, 'warm', 'ttft_ms', 'p95'))} | {ratio(warm50, cold50)} | "
        f"{f((r.get('cold') or {}).get('prompt_tokens_mean'))} / "
        f"{f((r.get('warm') or {}).get('prompt_tokens_mean'))} ({f(cached)}) | "
        f"{r['errors']} | {r.get('gpu_mem_mib', '–')} |")


def openai_tables(rows, phase, title):
    rows = [r for r in rows if r.get("phase", "B") == phase]
    out = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        out.append(f"\n#### {shape} (Q4_K_M), {title}\n")
        out.append(HEAD)
        out.append("|" + "---|" * HEAD.count(" | ") + "---|")
        for c in sorted({r["c"] for r in rows if r["shape"] == shape}):
            level = [r for r in rows if r["shape"] == shape and r["c"] == c]
            base = next((r for r in level if r["server"] == "llama-server"), None)
            for r in sorted(level, key=lambda r: (r["server"] != "llama-server", r["server"])):
                out.append(row(c, r, base))
    return out


def aims(rows, phase="B", title="phase B: Yap vs llama-server in the same run"):
    """The issue's aims, per model and level, from one phase."""
    rows = [r for r in rows if r.get("phase", "B") == phase]
    if not rows:
        return []
    out = [f"\n#### Aims ({title})\n",
           "| model | streams | Yap | aggregate tok/s ≥ 1.0× | cold TTFT p50 ≤ 1.1× | "
           "Yap warm/cold ≤ 0.5 | 8B @ 32: Yap TTFT p50 < 150 ms |",
           "|---|---|---|---|---|---|---|"]
    for shape in dict.fromkeys(r["shape"] for r in rows):
        for c in sorted({r["c"] for r in rows if r["shape"] == shape}):
            level = [r for r in rows if r["shape"] == shape and r["c"] == c]
            base = next((r for r in level if r["server"] == "llama-server"), None)
            for r in (r for r in level if r["server"] != "llama-server"):
                cold50, warm50 = p(r, "cold", "ttft_ms", "p50"), p(r, "warm", "ttft_ms", "p50")
                agg = ratio(r["aggregate_tps"], base and base["aggregate_tps"])
                ttft = ratio(cold50, base and p(base, "cold", "ttft_ms", "p50"))
                wc = ratio(warm50, cold50)
                ok = lambda s, lim, ge: "–" if s == "–" else (  # noqa: E731
                    f"{s} {'✓' if (float(s[:-1]) >= lim if ge else float(s[:-1]) <= lim) else '✗'}")
                aim8b = "–"
                if shape == "llama-3.1-8b" and c == 32 and cold50:
                    aim8b = f"{cold50:.0f} ms {'✓' if cold50 < 150 else '✗'}"
                out.append(f"| {shape} | {c} | {r['server']} | {ok(agg, 1.0, True)} | "
                           f"{ok(ttft, 1.1, False)} | {ok(wc, 0.5, False)} | {aim8b} |")
    return out


def ws_tables(rows):
    if not rows:
        return []
    out = ["\n#### Yap over the WebSocket (`yap bench --double-ttfb --cancels`, phase A)\n",
           "| model | server | streams | first-turn TTFB p50 / p95 ms | second-turn TTFB p50 / p95 ms | "
           "tok/s aggregate | tok/s per session | cancel→done p50 / p99 ms | errors |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for lv in r.get("levels", []):
            first, second = lv.get("first", {}), lv.get("second", {})
            cancel = lv.get("cancel_to_done_ms", {})
            out.append(
                f"| {r['shape']} | {r['server']} | {lv['concurrency']} | "
                f"{f(first.get('chat_ttfb_ms', {}).get('p50'))} / {f(first.get('chat_ttfb_ms', {}).get('p95'))} | "
                f"{f(second.get('chat_ttfb_ms', {}).get('p50'))} / {f(second.get('chat_ttfb_ms', {}).get('p95'))} | "
                f"{f((first.get('tokens_per_s_aggregate') or 0) + (second.get('tokens_per_s_aggregate') or 0))} | "
                f"{f(first.get('decode_tokens_per_s_per_session'))} | "
                f"{f(cancel.get('p50'), 1)} / {f(cancel.get('p99'), 1)} | "
                f"{first.get('errors', 0) + second.get('errors', 0)} |")
    return out


def main():
    dirs = sys.argv[1:] or ["target/gpu-out"]
    rows = load(dirs, "results.jsonl")
    lines = (openai_tables(rows, "B", "/v1/chat/completions streaming, Yap vs llama-server")
             + aims(rows)
             + openai_tables(rows, "S", "one persona shared by all users (--shared-persona)")
             + aims(rows, "S", "shared persona, same run")
             + openai_tables(rows, "A", "Yap alone while llama-server was compiling (phase A)")
             + ws_tables(load(dirs, "ws.jsonl")))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
