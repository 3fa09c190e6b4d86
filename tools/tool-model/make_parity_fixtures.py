#!/usr/bin/env python3
"""Generate tiny random HF sequence classifiers and their reference logits (parity fixtures).

For each architecture Yap's tool classifier supports, this writes a tiny model folder
(config.json with id2label, model.safetensors, tokenizer.json + tokenizer_config.json) and
`reference.json` (texts, the ids the HF tokenizer made, attention masks and the logits that
`transformers` computed for the padded batch) under crates/yap-tool/tests/fixtures/<arch>/.
The Rust test `crates/yap-tool/tests/parity.rs` loads each folder with candle and compares; for
BERT, `reference.json` also holds pair inputs (earlier turns + utterance) with the ids and type ids
`common.encode` made and their logits, which the Rust `ToolModel::encode` must reproduce exactly.

    python3 -m pip install torch transformers tokenizers safetensors
    python3 tools/tool-model/make_parity_fixtures.py
"""

import json
import os
import sys

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as yapcommon  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "yap-tool", "tests", "fixtures")
CORPUS = [
    "look at this outfit what do you think",
    "can you see my screen right now",
    "tell me a joke about cats",
    "what is the capital of france",
    "check out this picture I just took",
    "how does my code look, is there a bug here",
    "I had a long day at work and I am tired",
    "read what it says on the page please",
] * 4
TEXTS = [
    "look at this!",
    "what do you think of my new haircut, honestly, does it look okay on me?",
    "tell me a joke",
]
LABELS = {0: "no", 1: "yes"}
# Pair inputs (earlier turns + current utterance) for the BERT fixture, encoded as Yap encodes a
# turn (common.encode) with a small budget so that both truncations happen.
PAIR_MAX_TOKENS, PAIR_HISTORY_TURNS, PAIR_JOIN = 24, 2, "sep"
PAIRS = [
    {"history": [], "utterance": "look at this!"},
    {"history": ["I just finished my drawing"], "utterance": "what do you think?"},
    {"history": ["tell me a joke", " ", "I had a long day at work and I am tired", "read what it says on the page"],
     "utterance": "check out this picture"},
    {"history": ["can you see my screen right now"],
     "utterance": "how does my code look, is there a bug here, I had a long day at work and I am tired of it"},
    {"history": ["look at this outfit what do you think " * 3], "utterance": "hi"},
]


def wordpiece_tokenizer():
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=150, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    tok.train_from_iterator(CORPUS, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )


def bpe_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>",
    )


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def common(vocab, pad):
    return dict(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=pad,
        id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
    )


def build(arch):
    if arch in ("bert", "distilbert"):
        tok = wordpiece_tokenizer()
    else:
        tok = bpe_tokenizer()
    vocab, pad = len(tok), tok.pad_token_id
    if arch == "bert":
        cfg = transformers.BertConfig(**common(vocab, pad), type_vocab_size=2)
    elif arch == "distilbert":
        c = common(vocab, pad)
        cfg = transformers.DistilBertConfig(
            vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
            max_position_embeddings=64, pad_token_id=pad, id2label=c["id2label"],
            label2id=c["label2id"], seq_classif_dropout=0.0,
        )
    elif arch == "roberta":
        cfg = transformers.RobertaConfig(**dict(common(vocab, pad), max_position_embeddings=66), type_vocab_size=1)
    elif arch == "xlm-roberta":
        cfg = transformers.XLMRobertaConfig(**dict(common(vocab, pad), max_position_embeddings=66), type_vocab_size=1)
    elif arch == "longformer":
        cfg = transformers.LongformerConfig(
            **dict(common(vocab, pad), max_position_embeddings=66), type_vocab_size=1,
            attention_window=[4, 8], bos_token_id=0, eos_token_id=2, sep_token_id=2,
        )
    elif arch == "modernbert":
        cfg = transformers.ModernBertConfig(
            **dict(common(vocab, pad), num_hidden_layers=3), global_attn_every_n_layers=2,
            local_attention=8, classifier_pooling="mean", bos_token_id=0, eos_token_id=2,
            cls_token_id=0, sep_token_id=2,
        )
        cfg._attn_implementation = "eager"
    else:
        raise SystemExit(f"unknown arch {arch}")
    model = transformers.AutoModelForSequenceClassification.from_config(cfg)
    randomize(model, seed=1234)
    model.eval()
    return tok, model


def main():
    torch.manual_seed(0)
    archs = sys.argv[1:] or ["bert", "distilbert", "roberta", "xlm-roberta", "longformer", "modernbert"]
    for arch in archs:
        tok, model = build(arch)
        out = os.path.join(OUT, arch)
        os.makedirs(out, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        pair_ref = None
        if arch == "bert":
            # Yap's pair input: the model says how it reads history, and its budget.
            model.config.update({"yap_history_turns": PAIR_HISTORY_TURNS,
                                 "yap_history_join": yapcommon.JOINS[PAIR_JOIN], "yap_threshold": 0.5})
            model.save_pretrained(out, safe_serialization=True)
            tok.model_max_length = PAIR_MAX_TOKENS
            tok.save_pretrained(out)
            backend = yapcommon.backend_of(tok)
            pairs = []
            for case in PAIRS:
                ids, types = yapcommon.encode(backend, case["history"], case["utterance"], PAIR_MAX_TOKENS,
                                           PAIR_HISTORY_TURNS, PAIR_JOIN)
                with torch.no_grad():
                    lg = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types]),
                               attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits[0].tolist()
                pairs.append(dict(case, input_ids=ids, token_type_ids=types, logits=lg))
            # Where the utterance fits the budget, that is the tokenizer's own pair encoding with
            # only_first truncation from the left.
            tok.truncation_side = "left"
            for case, pair in zip(PAIRS, pairs):
                turns = [t.strip() for t in case["history"] if t.strip()][-PAIR_HISTORY_TURNS:]
                try:
                    hf = tok(yapcommon.JOINS[PAIR_JOIN].join(turns), case["utterance"], truncation="only_first",
                             max_length=PAIR_MAX_TOKENS, return_token_type_ids=True)
                except Exception:  # the utterance alone is over the budget: cut from its right instead
                    assert len(pair["input_ids"]) == PAIR_MAX_TOKENS and pair["token_type_ids"].count(0) == 2
                    continue
                assert hf["input_ids"] == pair["input_ids"], (hf, pair)
                assert hf["token_type_ids"] == pair["token_type_ids"], (hf, pair)
            tok.truncation_side = "right"
            pair_ref = {"max_tokens": PAIR_MAX_TOKENS, "history_turns": PAIR_HISTORY_TURNS, "cases": pairs}
            print("  pairs:", [len(p["input_ids"]) for p in pairs])
        enc = tok(TEXTS, padding=True, return_tensors="pt")
        kwargs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        with torch.no_grad():
            logits = model(**kwargs).logits
        ref = {
            "architecture": type(model).__name__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "texts": TEXTS,
            "input_ids": enc["input_ids"].tolist(),
            "attention_mask": enc["attention_mask"].tolist(),
            "logits": logits.tolist(),
        }
        if pair_ref:
            ref["pair"] = pair_ref
        with open(os.path.join(out, "reference.json"), "w") as f:
            json.dump(ref, f, indent=1)
        print(arch, type(model).__name__, tuple(enc["input_ids"].shape), logits[:, :].tolist())


if __name__ == "__main__":
    main()
