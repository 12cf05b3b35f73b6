#!/usr/bin/env python3
"""llama_infer --chat through a pipe, with a tiny Llama-3-style model (random weights, the real Llama 3
tokenizer), exported here from a Hugging Face folder written with numpy.

Checks: two turns answered, the conversation continued in the KV cache (the second turn feeds only
its own tokens), a single --prompt turn, the context-full message, EOF at once.
usage: chat_test.py BIN_DIR SOURCE_DIR MODELS_DIR     (exit 77 = skipped: MODELS_DIR absent)
"""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chat_model import export_chat_model  # noqa: E402

bin_dir, src_dir, models = sys.argv[1:4]
if not os.path.isdir(models):
    print(f"SKIP: needs {models} (the Llama 3 tokenizer); it is absent")
    sys.exit(77)
exe = os.path.join(bin_dir, "llama_infer")
fixture = json.load(open(os.path.join(src_dir, "test", "fixtures", "chat_ids.json")))["llama3"]["cases"]


failures = []


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))
    if not ok:
        failures.append(name)


with tempfile.TemporaryDirectory() as tmp:
    model = export_chat_model(tmp, src_dir, models)
    base = [exe, "--model", model, "--device", "cpu", "--chat", "--temperature", "0", "--n", "6"]

    # Two turns through a pipe: one reply line each; the second turn feeds the previous reply's
    # end (<|eot_id|>, and the cut-off reply's last token if it ran out of --n) plus its own turn.
    first, second = fixture[0]["turns"][0], fixture[2]["turns"][1]
    r = subprocess.run(base, input=f"{first}\n{second}\n", capture_output=True, text=True, timeout=120)
    check("two turns exit 0", r.returncode == 0, r.stderr)
    check("two reply lines", r.stdout.count("\n") == 2, repr(r.stdout))
    n1, n2 = len(fixture[0]["turn_ids"][0]), len(fixture[2]["turn_ids"][1])
    fed = [f"prompt tokens {n1 + n2 + k}," for k in (1, 2)]
    check("second turn reuses the cache", any(f in r.stderr for f in fed), f"{r.stderr!r}, want one of {fed}")

    r = subprocess.run(base + ["--prompt", "Hi there"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    check("single --prompt turn", r.returncode == 0 and r.stdout.count("\n") == 1, f"{r.returncode} {r.stdout!r} {r.stderr!r}")

    r = subprocess.run(base + ["--max_seq_len", "40"], input="one\ntwo\nthree\nfour\nfive\n", capture_output=True,
                       text=True, timeout=120)
    check("context full ends the chat with a message", r.returncode == 0 and "context is full" in r.stderr, r.stderr)

    r = subprocess.run(base, input="", capture_output=True, text=True, timeout=120)
    check("EOF at once ends cleanly", r.returncode == 0 and r.stdout == "", f"{r.returncode} {r.stdout!r}")

sys.exit(1 if failures else 0)
