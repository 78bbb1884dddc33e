"""Render the chat-template fixtures with Hugging Face transformers itself.

The Rust renderer in src/template.rs must produce byte-for-byte what
`tokenizer.apply_chat_template(..., tokenize=False)` produces, so the expected
strings are not written by hand: this script runs the real transformers code
(message normalisation, special-token variables, its Jinja environment and
filters) over every case and writes src/testdata/chat_cases.json. Tests read
that JSON; Python is never needed at test time.

    python3 -m venv .venv
    .venv/bin/pip install 'jinja2==3.1.*' 'transformers==5.24.0'
    .venv/bin/python scripts/render_reference.py

Model-folder cases are written as file maps (path -> content) that the Rust
tests materialise in a temporary folder; here they are materialised too, with a
tokenizer.json added so that `AutoTokenizer.from_pretrained` can load them.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import jinja2
import transformers
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "src" / "testdata" / "templates"
OUT = ROOT / "src" / "testdata" / "chat_cases.json"

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<|begin_of_text|>", "<|eot_id|>"]


def bytes_to_unicode():
    # GPT-2's reversible byte -> printable character table (as in the gateway's fixture tokenizer).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tokenizer_json():
    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    added = []
    for i, tok in enumerate(SPECIALS):
        vocab[tok] = 256 + i
        added.append({"id": 256 + i, "content": tok, "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True})
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }


TOKENIZER_JSON = json.dumps(tokenizer_json())


def template(name):
    return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


def tokenizer_with(bos, eos):
    kwargs = {}
    if bos is not None:
        kwargs["bos_token"] = bos
    if eos is not None:
        kwargs["eos_token"] = eos
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(TOKENIZER_JSON), **kwargs)


def outcome(render):
    """The rendered string, or the error a template raised: `raise_exception` raises a bare
    TemplateError whose message the gateway shows; anything else is a rendering failure."""
    try:
        return {"ok": render()}
    except jinja2.exceptions.TemplateError as e:
        if type(e) is jinja2.exceptions.TemplateError:
            return {"raised": e.message}
        return {"error": f"{type(e).__name__}: {e}"}
    except (TypeError, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------- inputs

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Météo actuelle d'une ville (°C) — 天气",
        "parameters": {
            "type": "object",
            # Deliberately not alphabetical: templates see keys in the order the client sent them.
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. \"Paris\""},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7.5},
            },
            "required": ["city"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "description": "Current time", "parameters": {"type": "object", "properties": {}}}}

USER_ONLY = [{"role": "user", "content": "Hello, who are you?"}]
MULTI_TURN = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "I need help with my order"},
    {"role": "assistant", "content": "I'd be happy to help. Could you provide your order number?"},
    {"role": "user", "content": "It's ORDER-123"},
]
NON_ASCII = [
    {"role": "user", "content": "Café — naïve façade? 日本語のテキスト 🚀👩‍💻 «quotes» \"dq\" 'sq' \\ back\ttab"},
    {"role": "assistant", "content": "Ça marche ✅ — 好的"},
    {"role": "user", "content": "  leading and trailing spaces  \n"},
]
CONTENT_NULL = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]

LLAMA_TOOL_CHAT = [
    {"role": "system", "content": "  You are a weather bot.  "},
    {"role": "user", "content": "What's the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "{\"temperature\": 21, \"sky\": \"clear\"}"},
    {"role": "ipython", "content": {"temperature": 21.5, "sky": "clear", "note": "é"}},
]
# OpenAI clients send `arguments` as a JSON-encoded string; templates then quote it (see report).
LLAMA_TOOL_CHAT_STRING_ARGS = [
    {"role": "user", "content": "What's the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"},
]
LLAMA_TWO_CALLS = [
    {"role": "user", "content": "Weather and time?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": {}}}]},
]
QWEN_TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris and Tokyo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}},
        {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "東京"}}}]},
    {"role": "tool", "tool_call_id": "a", "content": "{\"temp\": 21}"},
    {"role": "tool", "tool_call_id": "b", "content": "{\"temp\": 25}"},
    {"role": "assistant", "content": "Paris: 21°C, 東京: 25°C."},
    {"role": "user", "content": "Thanks"},
]
QWEN_CONTENT_AND_CALL = [
    {"role": "system", "content": "Custom system."},
    {"role": "user", "content": "Check"},
    {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"type": "function", "function": {"name": "get_time", "arguments": {}}}]},
]
COMPAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "  Hello world  ", "name": "bob"},
    {"role": "assistant", "content": "  Hi there  ", "reasoning_content": "thinking...", "tool_calls": None},
    {"role": "user", "content": "Héllo 世界 😀", "tool_call_id": None},
    {"role": "assistant", "content": "x", "reasoning": "via reasoning", "thinking": "own thinking"},
    {"role": "user", "content": "last"},
]

CASES = [
    # (name, template, bos, eos, messages, tools, add_generation_prompt)
    ("smollm2_user_only", "smollm2", "<|im_start|>", "<|im_end|>", USER_ONLY, None, True),
    ("smollm2_multi_turn", "smollm2", "<|im_start|>", "<|im_end|>", MULTI_TURN, None, True),
    ("smollm2_no_generation_prompt", "smollm2", "<|im_start|>", "<|im_end|>", MULTI_TURN[1:], None, False),
    ("smollm2_non_ascii", "smollm2", "<|im_start|>", "<|im_end|>", NON_ASCII, None, True),
    ("smollm2_content_null", "smollm2", "<|im_start|>", "<|im_end|>", CONTENT_NULL, None, True),
    ("smollm2_ignores_tools", "smollm2", "<|im_start|>", "<|im_end|>", USER_ONLY, [WEATHER_TOOL], True),
    ("fixture_user_only", "fixture", "<|im_start|>", "<|im_end|>", USER_ONLY, None, True),
    ("fixture_multi_turn", "fixture", "<|im_start|>", "<|im_end|>", MULTI_TURN, None, False),
    ("llama31_no_tools", "llama31", "<|begin_of_text|>", "<|eot_id|>", MULTI_TURN, None, True),
    ("llama31_tools", "llama31", "<|begin_of_text|>", "<|eot_id|>", LLAMA_TOOL_CHAT, [WEATHER_TOOL, TIME_TOOL], True),
    ("llama31_tools_string_arguments", "llama31", "<|begin_of_text|>", "<|eot_id|>", LLAMA_TOOL_CHAT_STRING_ARGS, [WEATHER_TOOL], False),
    ("llama31_two_tool_calls_raises", "llama31", "<|begin_of_text|>", "<|eot_id|>", LLAMA_TWO_CALLS, [WEATHER_TOOL, TIME_TOOL], True),
    ("llama31_tools_without_user_raises", "llama31", "<|begin_of_text|>", "<|eot_id|>", [{"role": "system", "content": "sys"}], [WEATHER_TOOL], True),
    ("llama31_empty_tools_list", "llama31", "<|begin_of_text|>", "<|eot_id|>", USER_ONLY, [], True),
    ("qwen25_no_tools", "qwen25", None, "<|im_end|>", USER_ONLY, None, True),
    ("qwen25_system_no_tools", "qwen25", None, "<|im_end|>", MULTI_TURN, None, False),
    ("qwen25_tools", "qwen25", None, "<|im_end|>", QWEN_TOOL_CHAT, [WEATHER_TOOL, TIME_TOOL], True),
    ("qwen25_tools_content_and_call", "qwen25", None, "<|im_end|>", QWEN_CONTENT_AND_CALL, [TIME_TOOL], True),
    ("mistral_alternating", "mistral", "<s>", "</s>", MULTI_TURN[1:], None, True),
    ("mistral_not_alternating_raises", "mistral", "<s>", "</s>", [MULTI_TURN[1], MULTI_TURN[3]], None, True),
    ("mistral_system_raises", "mistral", "<s>", "</s>", [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}], None, True),
    ("mistral_non_ascii", "mistral", "<s>", "</s>", NON_ASCII, None, False),
    ("generation_tags", "generation", None, None, MULTI_TURN, None, True),
    ("compat", "compat", "<|im_start|>", "<|im_end|>", COMPAT, None, True),
]

# Model folders, as file maps. Each lists renders to check: (messages, tools, add_generation_prompt).
LIST_FORM_CONFIG = {
    "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
    "eos_token": "</s>",
    "chat_template": [
        {"name": "default", "template": "{{ bos_token }}default:{% for m in messages %}{{ m.role }}={{ m.content }};{% endfor %}{{ eos_token }}"},
        {"name": "tool_use", "template": "{{ bos_token }}tool_use:{{ tools | map(attribute='function.name') | join(',') }}|{% for m in messages %}{{ m.content }}{% endfor %}"},
        {"name": "rag", "template": "unused"},
    ],
}
MODEL_DIRS = [
    ("list_form", {"tokenizer_config.json": json.dumps(LIST_FORM_CONFIG, indent=2)},
     [(USER_ONLY, None, False), (USER_ONLY, [WEATHER_TOOL, TIME_TOOL], False)]),
    ("jinja_file_wins", {
        "chat_template.jinja": template("smollm2"),
        "tokenizer_config.json": json.dumps({
            "bos_token": {"__type": "AddedToken", "content": "<|im_start|>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True},
            "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True},
            "chat_template": "stale template from tokenizer_config.json",
        }, indent=2),
     }, [(MULTI_TURN[1:], None, True)]),
    ("additional_templates", {
        "chat_template.jinja": "plain:{% for m in messages %}{{ m.content }}{% endfor %}",
        "additional_chat_templates/tool_use.jinja": "tools:{{ tools | length }}:{% for m in messages %}{{ m.content }}{% endfor %}",
        "tokenizer_config.json": json.dumps({"bos_token": "<s>", "eos_token": "</s>"}),
     }, [(USER_ONLY, None, False), (USER_ONLY, [WEATHER_TOOL], False)]),
    ("null_bos_qwen", {
        "tokenizer_config.json": json.dumps({"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                             "unk_token": None, "chat_template": template("qwen25")}),
     }, [(USER_ONLY, None, True)]),
    ("special_tokens_map_legacy", {
        # No added_tokens_decoder: transformers reads special_tokens_map.json, which overrides the config.
        "tokenizer_config.json": json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                             "chat_template": "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}|{% for m in messages %}{{ m.content }}{% endfor %}"}),
        "special_tokens_map.json": json.dumps({"bos_token": {"content": "<|begin_of_text|>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
                                               "unk_token": "<|endoftext|>"}),
     }, [(USER_ONLY, None, False)]),
    ("missing_template", {"tokenizer_config.json": json.dumps({"bos_token": "<s>", "eos_token": "</s>"})},
     [(USER_ONLY, None, True)]),
]


def render_case(name, tmpl, bos, eos, messages, tools, agp):
    tok = tokenizer_with(bos, eos)
    return outcome(lambda: tok.apply_chat_template(
        messages, tools=tools, chat_template=template(tmpl), add_generation_prompt=agp, tokenize=False))


def render_dir(files, renders):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for rel, content in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(content, encoding="utf-8")
        (folder / "tokenizer.json").write_text(TOKENIZER_JSON, encoding="utf-8")
        tok = AutoTokenizer.from_pretrained(str(folder))
        results = []
        for messages, tools, agp in renders:
            result = outcome(lambda: tok.apply_chat_template(messages, tools=tools, add_generation_prompt=agp, tokenize=False))
            results.append({"messages": messages, "tools": tools, "add_generation_prompt": agp, "expected": result})
        return results


def main():
    cases = []
    for name, tmpl, bos, eos, messages, tools, agp in CASES:
        cases.append({"name": name, "template": tmpl, "bos_token": bos, "eos_token": eos, "messages": messages,
                      "tools": tools, "add_generation_prompt": agp,
                      "expected": render_case(name, tmpl, bos, eos, messages, tools, agp)})
    dirs = [{"name": name, "files": files, "renders": render_dir(files, renders)} for name, files, renders in MODEL_DIRS]
    out = {
        "generated_by": f"scripts/render_reference.py with transformers {transformers.__version__}, jinja2 {jinja2.__version__}",
        "templates": {p.stem: p.read_text(encoding="utf-8") for p in sorted(TEMPLATES.glob("*.jinja"))},
        "cases": cases,
        "model_dirs": dirs,
    }
    OUT.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for case in cases:
        print(case["name"], "->", next(iter(case["expected"])))
    for d in dirs:
        print(d["name"], "->", [next(iter(r["expected"])) for r in d["renders"]])


if __name__ == "__main__":
    sys.exit(main())
