"""Batch-1 greedy decoding with transformers on CPU: the peer of `alignflow bench generate`.

    python3 scripts/peers/bench_hf_generate.py --model DIR [--new-tokens 64] [--threads 2]

Same shape of work as alignflow's bench: a 16-token prompt, then N new tokens with a KV cache,
greedy, f32 weights. Prints one JSON object; tokens_per_s counts decoding only (the prompt's
forward pass and first token are timed apart, as alignflow's bench does).
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_len), generator=g)
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(prompt, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t1 = time.perf_counter()
        for _ in range(args.new_tokens - 1):
            out = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t2 = time.perf_counter()
    print(json.dumps({
        "peer": f"transformers (torch {torch.__version__})",
        "threads": args.threads,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "prefill_tokens_per_s": args.prompt_len / (t1 - t0),
        "tokens_per_s": (args.new_tokens - 1) / (t2 - t1),
    }))


if __name__ == "__main__":
    main()
