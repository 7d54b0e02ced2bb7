"""PyTorch eager peer for `alignflow bench train`: the same Llama presets, the same step
(forward, cross-entropy, backward, AdamW), on the same threads, so the two can be measured side
by side in one run. Prints one JSON object.

Usage: python3 scripts/peers/bench_torch_train.py --preset mini|small [--steps N] [--threads 2]
Needs: torch, transformers (pip install torch transformers).
"""
import argparse, json, time

PRESETS = {
    # dim, layers, heads, kv heads, ffn, vocab, seq len, batch (issue 3)
    "mini": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=344, vocab_size=1024, T=128, B=16),
    "small": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
                  intermediate_size=688, vocab_size=4096, T=256, B=8),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=PRESETS, required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    p = dict(PRESETS[a.preset])
    T, B = p.pop("T"), p.pop("B")
    cfg = LlamaConfig(**p, max_position_embeddings=T, tie_word_embeddings=False, attn_implementation="eager")
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
    x = torch.randint(0, cfg.vocab_size, (B, T))

    def step():
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    dt = time.perf_counter() - t0
    n_params = sum(q.numel() for q in model.parameters())
    print(json.dumps({"peer": "pytorch-eager", "torch": torch.__version__, "preset": a.preset,
                      "threads": a.threads, "steps": a.steps, "tokens_per_s": B * T * a.steps / dt,
                      "seconds_per_step": dt / a.steps, "parameters": n_params}))


if __name__ == "__main__":
    main()
