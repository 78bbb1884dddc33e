#!/usr/bin/env python3
"""Greedy reference continuation of the benchmark model with Hugging Face transformers.

    hf_reference.py --model DIR --prompt TEXT [--max-tokens 32] [--device cuda] --out FILE.json

Applies the model folder's chat template (one user message, generation prompt),
decodes greedily with transformers (the GPU machine has it installed) in bf16 (the gateway's dtype), and writes {"prompt_tokens", "completion", "token_ids", ...}.
scripts/gpu-check.sh asks the gateway for the same completion at temperature 0
and reports how many leading characters agree (each token of the benchmark
model is one ASCII character): an independent check that the CUDA kernels,
paged attention included, compute the model, not only that they run fast. With
random weights the top two logits are sometimes close, so bf16 rounding
differences between the two implementations may diverge after a while; an
early mismatch (first tokens) points at a real bug.
"""

import argparse
import json
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    t0 = time.monotonic()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import transformers

    tok = AutoTokenizer.from_pretrained(a.model)
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(a.model, **{dtype_kw: torch.bfloat16}).to(a.device).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": a.prompt}],
                                  add_generation_prompt=True, return_tensors="pt")
    if not torch.is_tensor(ids):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    ids = ids.to(a.device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.max_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None,
                             pad_token_id=tok.pad_token_id or 0)
    new = out[0, ids.shape[1]:].tolist()
    text = tok.decode(new, skip_special_tokens=True)
    res = {"prompt_tokens": int(ids.shape[1]), "completion": text, "token_ids": new,
           "dtype": str(next(model.parameters()).dtype), "seconds": round(time.monotonic() - t0, 2)}
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(res, f)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
