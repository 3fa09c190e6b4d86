#!/usr/bin/env python3
"""Evaluate an assembled tool model (a Hugging Face folder written by `export.py --out` or
`train.py --out`) on single-turn case files in `transformers`, with the input Yap builds.

A case is `{"text", "expected": "yes"|"no", "history"?: "User: ...\\nAssistant: ...",
"category"?}` — the format `yap tool-eval --cases` reads; the history's user turns become segment
A (the server keeps only user turns for the tool model). Prints accuracy per category and every
miss with its yes-probability; `--predictions FILE` writes one JSON line per case.

    python3 tools/tool-model/eval_cases.py --model /tmp/yap-tool \\
        tools/tool-model/data/canonical-cases.jsonl tools/tool-model/data/eval-cases.jsonl
"""

import argparse
import json
import os
import sys

import torch
from transformers import AutoTokenizer, BertForSequenceClassification

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import train  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="assembled HF folder (config.json has the yap_* keys)")
    ap.add_argument("--threshold", type=float, help="default: the model's yap_threshold")
    ap.add_argument("--predictions")
    ap.add_argument("--quiet", action="store_true", help="no list of misses")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(args.model)
    backend = common.backend_of(tok)
    model = BertForSequenceClassification.from_pretrained(args.model).float().eval()
    cfg = model.config
    fmt = argparse.Namespace(max_tokens=cfg.yap_max_tokens, history_turns=cfg.yap_history_turns,
                             join=[k for k, v in common.JOINS.items() if v == cfg.yap_history_join][0])
    threshold = args.threshold if args.threshold is not None else cfg.yap_threshold
    out = open(args.predictions, "w") if args.predictions else None
    for path in args.files:
        rows = common.load_cases(path)
        probs = train.predict(model, train.encode_rows(backend, rows, fmt))
        m = train.metrics(rows, probs, threshold)
        train.report(os.path.basename(path), m, threshold)
        if not args.quiet:
            for r, p in zip(rows, probs):
                if (p >= threshold) != bool(r["label"]):
                    want = "yes" if r["label"] else "no"
                    print(f"    MISS want {want:3} p={p:.3f} [{r['category']}] {r['utterance']!r}"
                          + (f" after {r['history'][-1]!r}" if r["history"] else ""))
        if out:
            for r, p in zip(rows, probs):
                out.write(json.dumps({"file": os.path.basename(path), "utterance": r["utterance"],
                                      "label": r["label"], "p": p}) + "\n")
    if out:
        out.close()


if __name__ == "__main__":
    main()
