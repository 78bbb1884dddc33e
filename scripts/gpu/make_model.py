#!/usr/bin/env python3
"""Writes the GPU benchmark model: a Llama with Llama-3.2-1B's shape and random weights.

    make_model.py --tokenizer-dir DIR --out OUT [--device cuda] [--dtype bf16] [--small]

- Shape (default): hidden 2048, 16 layers, 32 heads, 8 KV heads, intermediate 8192,
  rope_theta 500000, max_position_embeddings 8192: Llama-3.2-1B without its
  128k-token vocabulary. The vocabulary is the tokenizer's: the tiny byte-level
  tokenizer that `loragate tiny-model --out DIR` writes (256 bytes + 3 specials =
  259 tokens), whose tokenizer.json / tokenizer_config.json (ChatML template) are
  copied from --tokenizer-dir. Decode throughput barely depends on the vocabulary:
  it only sizes the embedding lookup and the final lm_head matmul (2048 x 259
  here against 2048 x 128256 in the real model, about 0.26 of 1.2 GFLOP/token),
  so tokens/s here is a slight over-estimate for the real 1B model's and TTFT
  is dominated by the 16 transformer layers either way.
- Weights: normal(0, 0.02), norms at 1, seeded; generated with torch on --device
  (the GPU: seconds) and saved as safetensors (2 GB in bf16).
- The lm_head rows of every token that is not printable ASCII (the specials,
  among them EOS, and bytes outside 0x20..0x7e) are zero, so greedy decoding
  never picks them: every request runs to max_tokens and every token is one
  valid UTF-8 character (so the gateway streams each token as it comes).
- config.json has `rope_theta` (mistral.rs 0.8.1 does not read transformers 5's
  `rope_parameters`) and `architectures: ["LlamaForCausalLM"]`.

Without torch (this project's CPU machines), --small writes a tiny model of the
same layout with the standard library only (f32), to test this script and the
loader end to end on the CPU.
"""

import argparse
import json
import math
import os
import pathlib
import random
import shutil
import struct
import sys
import time

LLAMA_3_2_1B = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    rope_theta=500000.0,
    max_position_embeddings=8192,
)
SMALL = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_theta=500000.0,
    max_position_embeddings=2048,
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet (what a ByteLevel tokenizer's vocabulary spells)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def read_tokenizer(tok_dir: pathlib.Path):
    tok = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = dict(tok["model"]["vocab"])
    for added in tok.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    vocab_size = max(vocab.values()) + 1
    char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    # Token ids that decode to one printable ASCII byte: the only ones greedy may pick.
    allowed = sorted(
        i for s, i in vocab.items()
        if len(s) == 1 and s in char_to_byte and 0x20 <= char_to_byte[s] <= 0x7E
    )
    if len(allowed) < 32:
        raise SystemExit(f"make_model: only {len(allowed)} printable tokens in the tokenizer; "
                         "is it byte-level?")
    tcfg = json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8"))

    def token_id(name):
        v = tcfg.get(name)
        if isinstance(v, dict):
            v = v.get("content")
        return vocab.get(v) if v is not None else None

    return vocab_size, allowed, token_id("bos_token"), token_id("eos_token")


def tensor_shapes(c: dict, vocab: int) -> list[tuple[str, tuple[int, ...], str]]:
    h, i = c["hidden_size"], c["intermediate_size"]
    hd = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (vocab, h), "normal")]
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        out += [
            (f"{p}.input_layernorm.weight", (h,), "ones"),
            (f"{p}.self_attn.q_proj.weight", (h, h), "normal"),
            (f"{p}.self_attn.k_proj.weight", (kv, h), "normal"),
            (f"{p}.self_attn.v_proj.weight", (kv, h), "normal"),
            (f"{p}.self_attn.o_proj.weight", (h, h), "normal"),
            (f"{p}.post_attention_layernorm.weight", (h,), "ones"),
            (f"{p}.mlp.gate_proj.weight", (i, h), "normal"),
            (f"{p}.mlp.up_proj.weight", (i, h), "normal"),
            (f"{p}.mlp.down_proj.weight", (h, i), "normal"),
        ]
    out += [("model.norm.weight", (h,), "ones"), ("lm_head.weight", (vocab, h), "lm_head")]
    return out


def write_torch(path, shapes, allowed, device, dtype_name, seed):
    import torch
    from safetensors.torch import save_file

    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype_name]
    g = torch.Generator(device=device).manual_seed(seed)
    keep = torch.zeros(shapes[-1][1][0], dtype=torch.bool, device=device)
    keep[torch.tensor(allowed, device=device)] = True
    tensors = {}
    for name, shape, init in shapes:
        if init == "ones":
            t = torch.ones(shape, dtype=dtype, device=device)
        else:
            t = (torch.randn(shape, generator=g, device=device, dtype=torch.float32) * 0.02).to(dtype)
            if init == "lm_head":
                t[~keep] = 0
        tensors[name] = t
    if device != "cpu":
        torch.cuda.synchronize()
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def write_stdlib(path, shapes, allowed, seed):
    """f32 safetensors with the standard library only (small shapes: CPU tests)."""
    rng = random.Random(seed)
    keep = set(allowed)
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, shape, init in shapes:
        n = 1
        for d in shape:
            n *= d
        if init == "ones":
            values = [1.0] * n
        else:
            values = [rng.gauss(0.0, 0.02) for _ in range(n)]
            if init == "lm_head":
                cols = shape[1]
                for row in range(shape[0]):
                    if row not in keep:
                        values[row * cols:(row + 1) * cols] = [0.0] * cols
        blob = struct.pack(f"<{n}f", *values)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer-dir", type=pathlib.Path, required=True,
                   help="folder with tokenizer.json and tokenizer_config.json (loragate tiny-model --out)")
    p.add_argument("--out", type=pathlib.Path, required=True)
    p.add_argument("--device", default="cuda", help="torch device for the random weights")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--small", action="store_true", help="tiny shape (tests); no torch needed")
    a = p.parse_args()

    t0 = time.monotonic()
    shape = SMALL if a.small else LLAMA_3_2_1B
    vocab_size, allowed, bos, eos = read_tokenizer(a.tokenizer_dir)
    shapes = tensor_shapes(shape, vocab_size)
    params = sum(math.prod(s) for _, s, _ in shapes)

    a.out.mkdir(parents=True, exist_ok=True)
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    if have_torch:
        dtype = a.dtype
        write_torch(a.out / "model.safetensors", shapes, allowed, a.device, dtype, a.seed)
    elif a.small:
        dtype = "f32"
        write_stdlib(a.out / "model.safetensors", shapes, allowed, a.seed)
    else:
        print("make_model: torch is needed for the full-size model (or pass --small)", file=sys.stderr)
        return 1

    torch_dtype = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        **{k: shape[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                 "num_attention_heads", "num_key_value_heads")},
        "head_dim": shape["hidden_size"] // shape["num_attention_heads"],
        # Must equal the tokenizer's vocabulary (259 for the tiny byte-level one).
        "vocab_size": vocab_size,
        "max_position_embeddings": shape["max_position_embeddings"],
        "rms_norm_eps": 1e-5,
        # mistral.rs 0.8.1 reads rope_theta (not transformers 5's rope_parameters).
        "rope_theta": shape["rope_theta"],
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": torch_dtype,
    }
    (a.out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    gen = {"bos_token_id": bos, "eos_token_id": eos}
    (a.out / "generation_config.json").write_text(json.dumps(gen) + "\n", encoding="utf-8")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(a.tokenizer_dir / f, a.out / f)

    size = os.path.getsize(a.out / "model.safetensors")
    print(json.dumps({
        "out": str(a.out), "params": params, "dtype": dtype, "vocab_size": vocab_size,
        "allowed_tokens": len(allowed), "bytes": size, "seconds": round(time.monotonic() - t0, 2),
        "writer": "torch" if have_torch else "stdlib",
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
