#!/usr/bin/env python3
"""Runs the dev-split comparisons of docs/tool-model.md: each setting is one `train.py` run
(no export), its dev numbers appended to `--results`. Made for a GPU (minutes); on 2 CPU cores a
run takes 5-10 minutes.

    python3 tools/tool-model/sweep.py --grid l6 --base-dir DIR --device cuda --results dev.jsonl
"""

import argparse
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402

GRIDS = {
    # Input format and history, full fine-tuning (3 seeds each).
    "l6-input": [
        [f"--history-turns={h}", f"--join={j}", f"--max-tokens={t}", f"--seed={s}"]
        + (["--assistant"] if a else [])
        for (h, j, t, a) in [(0, "sep", 128, False), (1, "sep", 128, False), (2, "sep", 128, False),
                             (3, "sep", 128, False), (5, "sep", 128, False), (3, "newline", 128, False),
                             (3, "sep", 64, False), (6, "sep", 128, True)]
        for s in (0, 1, 2)
    ],
    # Method: full fine-tuning vs LoRA of several ranks, epochs / learning rates (3 seeds each).
    "l6-method": [
        m + [f"--seed={s}", "--history-turns=3"]
        for m in [["--method=full", "--lr=5e-5"], ["--method=full", "--lr=2e-4"],
                  ["--method=full", "--epochs=6"], ["--method=full", "--train-embeddings"],
                  ["--method=lora", "--rank=8"], ["--method=lora", "--rank=16"], ["--method=lora", "--rank=32"],
                  ["--method=lora", "--rank=16", "--lr=5e-4", "--epochs=6"]]
        for s in (0, 1, 2)
    ],
    "l6-lora": [
        m + [f"--seed={s}", "--history-turns=3"]
        for m in [["--method=lora", "--rank=8"], ["--method=lora", "--rank=16"], ["--method=lora", "--rank=32"],
                  ["--method=lora", "--rank=16", "--lr=5e-4", "--epochs=6"]]
        for s in (0, 1, 2)
    ],
    # The retrain with the added conversations (1 history turn, 3 seeds each): as before; plus a
    # copy of every train step with history sent alone (first turns / single-turn requests); plus
    # half of them; plus the old template set as extra single-turn cases.
    "l6-added": [
        ["--history-turns=1", f"--seed={s}"] + m
        for m in [[], ["--alone-copies=1.0"], ["--alone-copies=0.5"],
                  ["--extra-cases=" + os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "train.jsonl")]]
        for s in (0, 1, 2)
    ],
    # The second base (paraphrase-MiniLM-L3-v2).
    "l3": [
        m + [f"--seed={s}"]
        for m in [["--method=full", "--history-turns=3"], ["--method=full", "--history-turns=3", "--lr=2e-4"],
                  ["--method=full", "--history-turns=0"], ["--method=lora", "--rank=16", "--history-turns=3"]]
        for s in (0, 1, 2)
    ],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", required=True, choices=sorted(GRIDS))
    ap.add_argument("--base", default=None)
    ap.add_argument("--base-dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--results", required=True)
    ap.add_argument("--extra", default="", help="flags added to every run")
    args = ap.parse_args()
    base = args.base or ("minilm-l3" if args.grid.startswith("l3") else "minilm-l6")
    for flags in GRIDS[args.grid]:
        argv = [f"--base={base}", f"--device={args.device}", f"--results={args.results}",
                f"--tag={args.grid}", "--eval-delta-ranks=16,32,64"] + flags + args.extra.split()
        if args.base_dir:
            argv.append(f"--base-dir={args.base_dir}")
        print("==", " ".join(flags), flush=True)
        try:
            train.main([a for a in argv if a])
        except Exception:
            traceback.print_exc()


if __name__ == "__main__":
    main()
