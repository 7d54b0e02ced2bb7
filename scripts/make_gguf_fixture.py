#!/usr/bin/env python3
"""Builds the tiny GGUF fixtures for kernels/tests/gguf.rs.

A random small Llama is written the way llama.cpp's convert_hf_to_gguf.py writes one: Q and K
rows permuted for interleaved rope, dimensions innermost first, tensors quantized to a mix of
F32, F16, Q8_0, Q4_0 and Q4_1, a byte-level BPE vocabulary with merges and control tokens, and
a ChatML chat template. Next to each .gguf it writes the expected Hugging Face tensors
(dequantized with the gguf package's own numpy code, then un-permuted) as a .safetensors file,
so the Rust importer is checked against an independent implementation.

Usage: pip install gguf numpy && python3 scripts/make_gguf_fixture.py kernels/tests/fixtures/gguf
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def bytes_to_unicode():
    """GPT-2's map from the 256 byte values to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def vocab():
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    byte_chars = sorted(bytes_to_unicode().values())
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "c"), ("a", "t"), ("Ġc", "at"), ("Ġ", "s"),
              ("Ġs", "at"), ("o", "n"), ("Ġ", "m"), ("Ġm", "at"), ("e", "r"), ("Ġ", "a"), ("Ġa", "n"), ("Ġan", "d")]
    tokens = specials + byte_chars + [a + b for a, b in merges]
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    return tokens, types, [f"{a} {b}" for a, b in merges]


def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute: interleave the two rotary halves per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def build(out_dir, name, *, layers, tied, pre, seed):
    rng = np.random.default_rng(seed)
    tokens, types, merges = vocab()
    V, D, F, H, KV = len(tokens), 64, 96, 4, 2
    hd = D // H
    hf = {"model.embed_tokens.weight": rng.normal(0, 0.5, (V, D)), "model.norm.weight": 1 + rng.normal(0, 0.1, D)}
    if not tied:
        hf["lm_head.weight"] = rng.normal(0, 0.5, (V, D))
    for i in range(layers):
        p = f"model.layers.{i}."
        hf[p + "self_attn.q_proj.weight"] = rng.normal(0, 0.5, (H * hd, D))
        hf[p + "self_attn.k_proj.weight"] = rng.normal(0, 0.5, (KV * hd, D))
        hf[p + "self_attn.v_proj.weight"] = rng.normal(0, 0.5, (KV * hd, D))
        hf[p + "self_attn.o_proj.weight"] = rng.normal(0, 0.5, (D, H * hd))
        hf[p + "mlp.gate_proj.weight"] = rng.normal(0, 0.5, (F, D))
        hf[p + "mlp.up_proj.weight"] = rng.normal(0, 0.5, (F, D))
        hf[p + "mlp.down_proj.weight"] = rng.normal(0, 0.5, (D, F))
        hf[p + "input_layernorm.weight"] = 1 + rng.normal(0, 0.1, D)
        hf[p + "post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.1, D)
    plan = {  # gguf name, hf name, type, permute heads
        "token_embd.weight": ("model.embed_tokens.weight", Q.Q8_0, None),
        "output_norm.weight": ("model.norm.weight", Q.F32, None),
    }
    if not tied:
        plan["output.weight"] = ("lm_head.weight", Q.F16, None)
    for i in range(layers):
        p = f"model.layers.{i}."
        plan.update({
            f"blk.{i}.attn_q.weight": (p + "self_attn.q_proj.weight", Q.Q4_0, H),
            f"blk.{i}.attn_k.weight": (p + "self_attn.k_proj.weight", Q.Q4_1, KV),
            f"blk.{i}.attn_v.weight": (p + "self_attn.v_proj.weight", Q.Q8_0, None),
            f"blk.{i}.attn_output.weight": (p + "self_attn.o_proj.weight", Q.F16, None),
            f"blk.{i}.ffn_gate.weight": (p + "mlp.gate_proj.weight", Q.Q4_1, None),
            f"blk.{i}.ffn_up.weight": (p + "mlp.up_proj.weight", Q.Q4_0, None),
            f"blk.{i}.ffn_down.weight": (p + "mlp.down_proj.weight", Q.Q4_1 if i % 2 == 0 else Q.Q8_0, None),
            f"blk.{i}.attn_norm.weight": (p + "input_layernorm.weight", Q.F32, None),
            f"blk.{i}.ffn_norm.weight": (p + "post_attention_layernorm.weight", Q.F32, None),
        })
    w = gguf.GGUFWriter(str(Path(out_dir) / f"{name}.gguf"), "llama")
    w.add_name(name)
    w.add_context_length(512)
    w.add_embedding_length(D)
    w.add_block_count(layers)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_rope_dimension_count(hd)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_chat_template(CHATML)
    # Extra metadata of other value types, so the parser meets all of them.
    w.add_int8("test.i8", -3)
    w.add_uint16("test.u16", 65000)
    w.add_int16("test.i16", -300)
    w.add_int64("test.i64", -(1 << 40))
    w.add_uint64("test.u64", 1 << 40)
    w.add_float64("test.f64", 0.125)
    w.add_bool("test.bool", True)
    w.add_array("test.nested", [[1, 2], [3]])
    expected = {}
    for gname, (hname, qtype, heads) in plan.items():
        x = hf[hname].astype(np.float32)
        if heads is not None:
            x = permute(x, heads)
        if qtype == Q.F32:
            raw, deq = x, x
        elif qtype == Q.F16:
            raw = x.astype(np.float16)
            deq = raw.astype(np.float32)
        else:
            raw = gguf.quants.quantize(x, qtype)
            deq = gguf.quants.dequantize(raw, qtype).astype(np.float32)
        w.add_tensor(gname, raw, raw_dtype=qtype)
        expected[hname] = unpermute(deq, heads) if heads is not None else deq
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    write_safetensors(Path(out_dir) / f"{name}.expected.safetensors", expected)


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "kernels/tests/fixtures/gguf")
    out.mkdir(parents=True, exist_ok=True)
    build(out, "tiny", layers=2, tied=False, pre="smollm", seed=1)
    build(out, "tiny_tied", layers=1, tied=True, pre="gpt2", seed=2)
    for p in sorted(out.iterdir()):
        print(p, p.stat().st_size)


if __name__ == "__main__":
    main()
