"""Smoke test of the demo-adapter training (scripts/train_demo_adapters.py).

Trains every demo adapter for a few steps on the tiny fixture model, twice,
and checks that what is saved is what peft's `save_pretrained` writes and the
gateway accepts (src/adapters/validate.rs), that the loss went down and that
both runs gave the same bytes.

Needs LORAGATE_TINY_MODEL (a folder written by `loragate tiny-model --out DIR`)
and a Python with torch, transformers and peft: this interpreter, or the
training virtualenv made by scripts/train-demo-adapters.sh
(~/.cache/loragate/train-venv; LORAGATE_TRAIN_PYTHON overrides). Skipped,
never passed, without them.
"""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train_demo_adapters.py"
ADAPTERS = ["pirate", "support", "shouty"]
TARGETS = ["k_proj", "o_proj", "q_proj", "v_proj"]
RANK, ALPHA, STEPS = 8, 16, 6
# Options peft writes that the gateway refuses when set (validate.rs).
UNSUPPORTED = ["use_dora", "use_rslora", "rank_pattern", "alpha_pattern", "fan_in_fan_out",
               "modules_to_save", "layers_to_transform", "lora_bias"]


def _python_with_torch():
    cache = Path(os.environ.get("LORAGATE_CACHE", Path.home() / ".cache" / "loragate"))
    candidates = [sys.executable, os.environ.get("LORAGATE_TRAIN_PYTHON") or str(cache / "train-venv" / "bin" / "python")]
    for python in candidates:
        if not Path(python).exists():
            continue
        probe = subprocess.run([python, "-c", "import torch, transformers, peft"], capture_output=True)
        if probe.returncode == 0:
            return python
    pytest.skip(
        "torch (with transformers and peft) is not importable here nor in "
        f"{candidates[1]}: run scripts/train-demo-adapters.sh --smoke once to install it"
    )


def _tiny_model():
    path = os.environ.get("LORAGATE_TINY_MODEL")
    if not path:
        pytest.skip("LORAGATE_TINY_MODEL is not set (a folder from `loragate tiny-model --out DIR`)")
    if not (Path(path) / "config.json").exists():
        pytest.skip(f"LORAGATE_TINY_MODEL={path} holds no model (config.json missing)")
    return Path(path)


def _train(python, base, out):
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("LORAGATE_TRAIN_THREADS", None)
    run = subprocess.run(
        [python, str(SCRIPT), "--base", str(base), "--out", str(out), "--smoke", "--steps", str(STEPS)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return run


def _safetensors_header(path):
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    metadata = header.pop("__metadata__", None)
    return header, metadata, len(data) - 8 - size


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = _tiny_model()
    python = _python_with_torch()
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    _train(python, base, first)
    _train(python, base, second)
    return base, first, second


def test_each_adapter_is_what_peft_saves(trained):
    base, out, _ = trained
    config = json.loads((base / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    kv = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    outputs = {"q_proj": hidden, "k_proj": kv, "v_proj": kv, "o_proj": hidden}
    for name in ADAPTERS:
        folder = out / name
        assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        adapter = json.loads((folder / "adapter_config.json").read_text())
        assert adapter["peft_type"] == "LORA"
        assert adapter["task_type"] == "CAUSAL_LM"
        assert adapter["r"] == RANK and adapter["lora_alpha"] == ALPHA
        assert sorted(adapter["target_modules"]) == TARGETS
        assert adapter["base_model_name_or_path"] == "smollm2-135m-instruct"
        assert adapter["bias"] == "none"
        for option in UNSUPPORTED:
            assert not adapter.get(option), f"{name}: {option} = {adapter.get(option)!r}"

        header, metadata, payload = _safetensors_header(folder / "adapter_model.safetensors")
        assert metadata == {"format": "pt"}
        expected = {}
        for layer in range(layers):
            for module in TARGETS:
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
                expected[f"{prefix}.lora_A.weight"] = [RANK, hidden]
                expected[f"{prefix}.lora_B.weight"] = [outputs[module], RANK]
        assert {k: v["shape"] for k, v in header.items()} == expected
        assert {v["dtype"] for v in header.values()} == {"F32"}
        assert payload == 4 * sum(a * b for a, b in expected.values())


def test_loss_went_down(trained):
    _, out, _ = trained
    record = json.loads((out / "TRAINING.json").read_text())
    assert record["settings"]["smoke"] is True
    assert record["settings"]["deterministic_algorithms"] is True
    for name in ADAPTERS:
        entry = record["adapters"][name]
        assert entry["steps"] == STEPS and len(entry["loss"]["per_step"]) == STEPS
        # The same fixed batch before and after training.
        assert entry["loss"]["probe_after"] < entry["loss"]["probe_before"], (name, entry["loss"])


def test_sha256sums_list_every_adapter_file_and_runs_are_identical(trained):
    _, first, second = trained
    import hashlib

    lines = (first / "SHA256SUMS").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, path = line.split("  ", 1)
        listed[path] = digest
    assert sorted(listed) == sorted(f"{n}/{f}" for n in ADAPTERS for f in ("adapter_config.json", "adapter_model.safetensors"))
    for path, digest in listed.items():
        assert hashlib.sha256((first / path).read_bytes()).hexdigest() == digest
    assert (second / "SHA256SUMS").read_text() == (first / "SHA256SUMS").read_text()
