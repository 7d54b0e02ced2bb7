#!/usr/bin/env python3
"""Checks that a model directory written by alignflow loads in transformers and computes what
alignflow computed, and runs transformers' greedy decoding for comparisons.

  python3 scripts/check_hf_roundtrip.py compare DIR ALIGNFLOW.safetensors [ATOL]
      ALIGNFLOW.safetensors holds, per row i, `row{i}.ids` (token ids as f32) and `row{i}.out`:
      logits [T, vocab] for a causal LM, or the score [num_labels] at the last token for a
      LlamaForSequenceClassification directory. Prints the worst difference; exit 1 if > ATOL.
  python3 scripts/check_hf_roundtrip.py greedy DIR N_NEW 1,2,3
      Prints transformers' greedy continuation (new ids, comma-separated).

Exits with status 3 (reason on stderr) when torch or transformers is not importable, so callers
can skip. Float32 throughout; the directory is loaded with from_pretrained as a user would.
"""
import sys

try:
    import torch
    import transformers
    from safetensors.torch import load_file
except Exception as e:  # noqa: BLE001 - any import failure means "skip"
    print(f"skip: torch/transformers not importable: {e}", file=sys.stderr)
    sys.exit(3)


def load(path):
    cfg = transformers.AutoConfig.from_pretrained(path)
    is_cls = any(a.endswith("ForSequenceClassification") for a in (cfg.architectures or []))
    cls = transformers.LlamaForSequenceClassification if is_cls else transformers.LlamaForCausalLM
    return cls.from_pretrained(path, dtype=torch.float32).eval(), is_cls


def compare(path, expected_path, atol):
    model, is_cls = load(path)
    want = load_file(expected_path)
    worst = 0.0
    i = 0
    while f"row{i}.ids" in want:
        ids = want[f"row{i}.ids"].round().long().unsqueeze(0)
        out = model(input_ids=ids).logits[0]
        got = out if not is_cls else out.reshape(-1)
        exp = want[f"row{i}.out"].reshape(got.shape)
        worst = max(worst, (got - exp).abs().max().item())
        i += 1
    if i == 0:
        sys.exit(f"{expected_path}: no rows")
    print(f"rows {i}, worst |transformers - alignflow| = {worst:.3e} (atol {atol})")
    sys.exit(0 if worst <= atol else 1)


def greedy(path, n, ids):
    model, _ = load(path)
    eos = model.generation_config.eos_token_id
    pad = eos if isinstance(eos, int) else (eos[0] if eos else None)
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    print(",".join(str(int(t)) for t in out[0, len(ids):]))


def main():
    torch.manual_seed(0)
    with torch.no_grad():
        if sys.argv[1] == "compare":
            compare(sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 1e-4)
        elif sys.argv[1] == "greedy":
            greedy(sys.argv[2], int(sys.argv[3]), [int(x) for x in sys.argv[4].split(",")])
        else:
            sys.exit(f"unknown mode {sys.argv[1]}")


if __name__ == "__main__":
    main()
