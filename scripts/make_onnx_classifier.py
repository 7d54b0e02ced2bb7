#!/usr/bin/env python3
"""Builds a tiny ONNX text classifier and its tokenizer.json, for the tests of the `onnx_judge`
stage (no download): a bag-of-words "unsafe-content" classifier. Each word of a fixed vocabulary
has two logits (class 0 = fine, class 1 = flagged); the model sums them over the unmasked tokens:

    logits[b, c] = sum_t attention_mask[b, t] * W[input_ids[b, t], c]

Inputs input_ids and attention_mask (int64 [batch, tokens]); output logits (float [batch, 2]).
The tokenizer is a Hugging Face tokenizers WordLevel model (lower-cased, whitespace and
punctuation split), written as JSON by hand so only the PyPI package `onnx` is needed.

Usage: make_onnx_classifier.py OUT_DIR [--check TEXT...]  (--check also prints the scores that
Python onnxruntime gives, one per line, for cross-checking the Rust side)."""
import json
import os
import re
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLAGGED = ["hate", "kill", "steal", "weapon", "poison", "hack", "bomb", "attack", "hurt", "illegal"]
FINE = ["sorry", "help", "please", "safe", "thanks", "answer", "the", "a", "is", "of", "to", "and", "you", "i", "it"]


def vocab():
    words = ["[UNK]", "[PAD]"] + FINE + FLAGGED
    return {w: i for i, w in enumerate(words)}


def weights(v):
    w = np.zeros((len(v), 2), dtype=np.float32)
    for word, i in v.items():
        if word in FLAGGED:
            w[i] = [0.0, 2.0]
        elif word in FINE:
            w[i] = [0.5, 0.0]
    w[v["[UNK]"]] = [0.1, 0.0]
    return w


def model(w):
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])
    nodes = [
        helper.make_node("Gather", ["W", "input_ids"], ["emb"], axis=0),  # [b, t, 2]
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),  # [b, t, 1]
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["logits"], keepdims=0),  # [b, 2]
    ]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")]
    g = helper.make_graph(nodes, "bag_of_words_classifier", [ids, mask], [out], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="alignflow-tests")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def tokenizer_json(v):
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": v, "unk_token": "[UNK]"},
    }


def python_scores(path, v, texts):
    import onnxruntime as ort
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = []
    for t in texts:
        toks = re.findall(r"\w+|[^\w\s]+", t.lower())
        ids = [v.get(x, v["[UNK]"]) for x in toks] or [0]
        mask = [1] * len(toks) or [0]
        logits = s.run(None, {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.array([mask], dtype=np.int64)})[0][0]
        e = np.exp(logits - logits.max())
        out.append(float(e[1] / e.sum()))
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    v = vocab()
    path = os.path.join(out, "classifier.onnx")
    onnx.save(model(weights(v)), path)
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tokenizer_json(v), f)
    if len(sys.argv) > 2 and sys.argv[2] == "--check":
        for s in python_scores(path, v, sys.argv[3:]):
            print(f"{s:.6f}")


if __name__ == "__main__":
    main()
