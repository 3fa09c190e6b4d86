#!/usr/bin/env python3
"""Split the hand-written conversations into train / dev / test, by conversation.

Reads data/conversations/<category>.jsonl (one conversation a line) and writes
data/splits/{train,dev,test}.jsonl in the same format. Within each category the conversations
are shuffled with a fixed seed and cut 65 / 15 / 20 (test and dev rounded, train the rest), so
every category is in every split and no conversation is in two. The test split must hold at least
900 labelled steps; it is for the final evaluation only: no training, threshold or model choice
may look at it.

Conversations added later live in `data/conversations/added-*.jsonl`. They never take part in the
shuffle above (so the first 500 conversations keep their split, and the test split stays exactly
as it was) and never go to test: each goes to dev when the sha256 of its id, read as a number, is
0-19 modulo 100 (about 20%), else to train.

    python3 tools/tool-model/split.py          # rewrites data/splits/*.jsonl (deterministic)
    python3 tools/tool-model/split.py --check  # fails if the committed splits differ
"""

import argparse
import glob
import hashlib
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
SEED = 12
FRACTIONS = {"test": 0.20, "dev": 0.15}
MIN_TEST_STEPS = 900
ADDED = "added-"
ADDED_DEV_PERCENT = 20


def load_conversations():
    """(the original conversations by category, the added ones)"""
    by_category, added = {}, []
    for path in sorted(glob.glob(os.path.join(DATA, "conversations", "*.jsonl"))):
        with open(path) as f:
            for line in f:
                if line.strip():
                    conv = json.loads(line)
                    if os.path.basename(path).startswith(ADDED):
                        added.append(conv)
                    else:
                        by_category.setdefault(conv["category"], []).append(conv)
    return by_category, added


def added_split(conv):
    """train or dev for an added conversation: fixed by its id alone."""
    n = int(hashlib.sha256(conv["id"].encode()).hexdigest(), 16)
    return "dev" if n % 100 < ADDED_DEV_PERCENT else "train"


def split(by_category, added=()):
    rng = random.Random(SEED)
    out = {"train": [], "dev": [], "test": []}
    for category in sorted(by_category):
        convs = sorted(by_category[category], key=lambda c: c["id"])
        rng.shuffle(convs)
        n_test = round(len(convs) * FRACTIONS["test"])
        n_dev = round(len(convs) * FRACTIONS["dev"])
        out["test"] += convs[:n_test]
        out["dev"] += convs[n_test:n_test + n_dev]
        out["train"] += convs[n_test + n_dev:]
    for conv in added:
        out[added_split(conv)].append(conv)
    for name in out:
        out[name].sort(key=lambda c: (c["category"], c["id"]))
    return out


def render(convs):
    return "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in convs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = ap.parse_args()
    splits = split(*load_conversations())
    ids = [c["id"] for convs in splits.values() for c in convs]
    assert len(ids) == len(set(ids)), "a conversation id is used twice"
    stale = []
    for name, convs in splits.items():
        steps = sum(len(c["steps"]) for c in convs)
        yes = sum(s["label"] == "yes" for c in convs for s in c["steps"])
        print(f"{name:5}: {len(convs):3} conversations, {steps:4} steps, {yes / steps:.1%} yes")
        if name == "test" and steps < MIN_TEST_STEPS:
            sys.exit(f"test split has {steps} steps, fewer than {MIN_TEST_STEPS}")
        path = os.path.join(DATA, "splits", f"{name}.jsonl")
        text = render(convs)
        if args.check:
            if not os.path.exists(path) or open(path).read() != text:
                stale.append(path)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    if stale:
        sys.exit("out of date (run tools/tool-model/split.py): " + ", ".join(stale))


if __name__ == "__main__":
    main()
