#!/usr/bin/env python3
"""Greedy answers of a base model and its adapters, and their comparison.

    adapter_answers.py URL PROMPT OUT.json BASE ADAPTER...
        asks URL for 32 greedy tokens from BASE and each ADAPTER, writes
        {model: answer or null} to OUT.json and prints it;
    adapter_answers.py --compare A.json B.json ADAPTER...
        prints "1 ..." when every ADAPTER's answers in A and B share at least
        their first 8 characters (else "0 ..."), with the counts.

Standard library only (the GPU machine has no internet).
"""

import json
import sys
import urllib.request


def ask(url: str, prompt: str, models: list[str]) -> dict:
    answers = {}
    for model in models:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": 32, "temperature": 0}).encode()
        request = urllib.request.Request(url + "/v1/chat/completions", body,
                                         {"content-type": "application/json"})
        try:
            answer = json.load(urllib.request.urlopen(request, timeout=100))
            answers[model] = answer["choices"][0]["message"]["content"]
        except Exception as error:  # reported as null, and on stderr
            answers[model] = None
            print(f"{model}: {error}", file=sys.stderr)
    return answers


def common_prefix(a, b) -> int:
    if not a or not b:
        return 0
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> int:
    if sys.argv[1] == "--compare":
        first, second = (json.load(open(path)) for path in sys.argv[2:4])
        names = sys.argv[4:]
        agreed = {name: common_prefix(first.get(name), second.get(name)) for name in names}
        ok = all(n >= 8 for n in agreed.values())
        print(int(ok), " ".join(f"{name}: {n} of 32 chars" for name, n in agreed.items()))
        return 0
    url, prompt, out = sys.argv[1:4]
    answers = ask(url, prompt, sys.argv[4:])
    json.dump(answers, open(out, "w"))
    print(json.dumps(answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
