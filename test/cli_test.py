#!/usr/bin/env python3
"""llama_infer from the command line: bad input gets one line on stderr and a non-zero exit; a good run
prints the prompt and the greedy continuation of the independent reference (test/fixtures).

usage: cli_test.py BIN_DIR SOURCE_DIR MODELS_DIR      (exit 77 = skipped: MODELS_DIR absent)
"""
import json
import os
import subprocess
import sys
import tempfile

bin_dir, src_dir, models = sys.argv[1:4]
if not os.path.isdir(models):
    print(f"SKIP: needs {models} (test data beside the checkout); it is absent")
    sys.exit(77)
exe = os.path.join(bin_dir, "llama_infer")
stories = os.path.join(models, "stories260K", "stories260K.bin")
tok512 = os.path.join(models, "stories260K", "tok512.model")
base = ["--model", stories, "--tokenizer", tok512, "--device", "cpu"]
failures = []


def run(args, stdin=None):
    return subprocess.run([exe] + args, capture_output=True, text=True, input=stdin, timeout=120)


def expect_error(name, args, code=None, needle=None):
    r = run(args)
    lines = r.stderr.strip().splitlines()
    problems = []
    if r.returncode == 0:
        problems.append("exit code 0")
    if code is not None and r.returncode != code:
        problems.append(f"exit code {r.returncode}, expected {code}")
    if r.returncode < 0:
        problems.append(f"killed by signal {-r.returncode}")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines, expected 1")
    if needle and needle not in r.stderr:
        problems.append(f"stderr lacks {needle!r}")
    for bad in ("Check failed", "terminate called", "Segmentation", "*** "):
        if bad in r.stderr:
            problems.append(f"stderr shows a crash ({bad})")
    if problems:
        failures.append(f"{name}: {'; '.join(problems)}\n    stderr: {r.stderr.strip()[:300]}")
    else:
        print(f"ok   {name}: exit {r.returncode}: {r.stderr.strip()}")


with tempfile.TemporaryDirectory() as tmp:
    garbage = os.path.join(tmp, "garbage.bin")
    with open(garbage, "wb") as f:
        f.write(os.urandom(4096))
    truncated = os.path.join(tmp, "truncated.bin")
    with open(stories, "rb") as f, open(truncated, "wb") as g:
        g.write(f.read()[:500000])

    expect_error("no --model", ["--prompt", "hi"], 2, "--model")
    expect_error("missing file", ["--model", "/nonexistent/x.bin"], 1, "/nonexistent/x.bin")
    expect_error("garbage file", ["--model", garbage, "--tokenizer", tok512, "--device", "cpu"], 1, garbage)
    expect_error("truncated file", ["--model", truncated, "--tokenizer", tok512, "--device", "cpu"], 1, "truncated")
    expect_error("llama2.c file without tokenizer", ["--model", stories, "--device", "cpu"], 2, "--tokenizer")
    expect_error("tokenizer of another vocabulary",
                 ["--model", stories, "--tokenizer", os.path.join(models, "llama2", "tokenizer.model"),
                  "--device", "cpu"], 1, "32000")
    expect_error("bad tokenizer file", ["--model", stories, "--tokenizer", garbage, "--device", "cpu"], 1)
    expect_error("unknown device", base[:-1] + ["tpu"], 2, "--device")
    expect_error("unknown dtype", base + ["--dtype", "fp8"], 2, "--dtype")
    expect_error("negative temperature", base + ["--temperature", "-1"], 2, "temperature")
    expect_error("top_p above 1", base + ["--top_p", "1.5"], 2, "top_p")
    expect_error("top_p zero", base + ["--top_p", "0"], 2, "top_p")
    expect_error("--n 0", base + ["--n", "0"], 2, "--n")
    expect_error("--tp 0", base + ["--tp", "0"], 2, "--tp")
    expect_error("--max_seq_len above the model", base + ["--max_seq_len", "100000"], 1, "max_seq_len")
    expect_error("unknown flag", base + ["--bogus", "1"], None, "bogus")
    expect_error("stray argument", base + ["extra"], 2, "extra")
    expect_error("prompt longer than the context", base + ["--max_seq_len", "8", "--prompt", "Once upon a time " * 10], 1,
                 "context")

    # A good run: the prompt echoed, then exactly the reference's greedy continuation, then stats on stderr.
    fixture = json.load(open(os.path.join(src_dir, "test", "fixtures", "stories260K_greedy.json")))
    case = fixture["cases"][0]
    r = run(base + ["--prompt", case["prompt"], "--temperature", "0", "--n", str(len(case["generated_ids"]))])
    want = case["prompt"] + case["text"] + "\n"
    if r.returncode != 0 or r.stdout != want:
        failures.append(f"greedy run: exit {r.returncode}\n    got:  {r.stdout!r}\n    want: {want!r}\n    {r.stderr}")
    elif "[stats] prompt tokens 5, generated 80" not in r.stderr:
        failures.append(f"greedy run: stats line missing or wrong: {r.stderr!r}")
    else:
        print("ok   greedy run matches the reference text")

    # An empty prompt starts from BOS; generation stops cleanly.
    r = run(base + ["--prompt", "", "--n", "20", "--seed", "3"])
    if r.returncode != 0 or not r.stdout.strip():
        failures.append(f"empty prompt: exit {r.returncode}, stdout {r.stdout!r}, stderr {r.stderr!r}")
    else:
        print("ok   empty prompt generates from BOS")

    # Context limit during generation stops with a reason, not an error.
    r = run(base + ["--prompt", "Once", "--max_seq_len", "16", "--n", "100", "--temperature", "0"])
    if r.returncode != 0 or "stop: context" not in r.stderr:
        failures.append(f"context limit: exit {r.returncode}, stderr {r.stderr!r}")
    else:
        print("ok   generation stops at the context limit")

if failures:
    print("\nFAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("all command-line checks passed")
