"""PyTorch eager peer for `alignflow bench train`: the same Llama presets, the same step
(forward, cross-entropy, backward, AdamW), on the same threads, so the two can be measured side
by side in one run. Prints one JSON object.

Usage: python3 scripts/peers/bench_torch_train.py --preset mini|small|1b [--steps N] [--threads 2]
       [--device cuda --micro-batch M]
On CUDA the step runs in bf16 autocast with f32 master weights (the usual PyTorch mixed
precision, as alignflow's CUDA backend does), SDPA attention, gradient accumulation over
micro-batches of M rows, and times with device synchronisation.
Needs: torch, transformers (pip install torch transformers).
"""
import argparse, json, time

PRESETS = {
    # dim, layers, heads, kv heads, ffn, vocab, seq len, batch (issue 3)
    "mini": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=344, vocab_size=1024, T=128, B=16),
    "small": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
                  intermediate_size=688, vocab_size=4096, T=256, B=8),
    "1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
               intermediate_size=5632, vocab_size=32000, T=1024, B=16),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=PRESETS, required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--micro-batch", type=int, default=0)
    a = ap.parse_args()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    p = dict(PRESETS[a.preset])
    T, B = p.pop("T"), p.pop("B")
    cuda = a.device.startswith("cuda")
    attn = "sdpa" if cuda else "eager"
    cfg = LlamaConfig(**p, max_position_embeddings=T, tie_word_embeddings=False, attn_implementation=attn)
    model = LlamaForCausalLM(cfg).to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
    x = torch.randint(0, cfg.vocab_size, (B, T), device=a.device)
    mb = a.micro_batch or B
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step():
        for i in range(0, B, mb):
            xs = x[i:i + mb]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                out = model(input_ids=xs, labels=xs)
            (out.loss * xs.shape[0] / B).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(a.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    dt = time.perf_counter() - t0
    n_params = sum(q.numel() for q in model.parameters())
    print(json.dumps({"peer": "pytorch-eager", "torch": torch.__version__, "preset": a.preset,
                      "threads": a.threads, "steps": a.steps, "tokens_per_s": B * T * a.steps / dt,
                      "seconds_per_step": dt / a.steps, "parameters": n_params, "device": a.device,
                      "attn": attn, "micro_batch": mb,
                      "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None}))


if __name__ == "__main__":
    main()
