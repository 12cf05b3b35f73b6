#!/usr/bin/env python3
"""llama_infer from the command line: bad input gets one line on stderr and a non-zero exit; a good run
prints the prompt and the greedy continuation of the independent reference (test/fixtures).

usage: cli_test.py BIN_DIR SOURCE_DIR MODELS_DIR      (exit 77 = skipped: MODELS_DIR absent)
"""
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time

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
    for n in ([needle] if isinstance(needle, str) else needle or []):
        if n not in r.stderr:
            problems.append(f"stderr lacks {n!r}")
    for bad in ("Check failed", "terminate called", "Segmentation", "*** "):
        if bad in r.stderr:
            problems.append(f"stderr shows a crash ({bad})")
    if problems:
        failures.append(f"{name}: {'; '.join(problems)}\n    stderr: {r.stderr.strip()[:300]}")
    else:
        print(f"ok   {name}: exit {r.returncode}: {r.stderr.strip()}")


def write_kv_hungry_model(path):
    """A small file whose KV cache cannot be allocated: 8 layers x 4194304 positions x 8192 K/V values
    in fp32 is 2 TiB (every layer reads the same bytes; the file is 0.6 MB). docs/model_format.md."""
    dim, hidden, layers, heads, head_dim, vocab = 16, 16, 8, 64, 128, 512
    q = heads * head_dim
    blobs, tensors = [], []

    def blob(nbytes, value):
        blobs.append(struct.pack("<f", value) * (nbytes // 4))
        return sum(len(b) + (-len(b) % 256) for b in blobs[:-1])

    big = blob(q * dim * 4, 0.01)       # wq, wk, wv [8192, 16] and wo [16, 8192]
    small = blob(hidden * dim * 4, 0.01)
    ones = blob(dim * 4, 1.0)
    embed = blob(vocab * dim * 4, 0.01)

    def add(name, shape, offset):
        n = 4
        for d in shape:
            n *= d
        tensors.append({"name": name, "dtype": "fp32", "shape": shape, "offset": offset, "nbytes": n})
    add("tok_embeddings", [vocab, dim], embed)
    add("norm", [dim], ones)
    for i in range(layers):
        p = f"layers.{i}."
        add(p + "attention_norm", [dim], ones)
        add(p + "ffn_norm", [dim], ones)
        for w in ("wq", "wk", "wv"):
            add(p + w, [q, dim], big)
        add(p + "wo", [dim, q], big)
        for w in ("w1", "w2", "w3"):
            add(p + w, [hidden, dim], small)
    config = {"family": "llama2", "dim": dim, "hidden_dim": hidden, "n_layers": layers, "n_heads": heads,
              "n_kv_heads": heads, "head_dim": head_dim, "vocab_size": vocab, "max_seq_len": 4194304,
              "norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None, "tied_embeddings": True,
              "bos_id": 1, "eos_ids": [2], "weight_dtype": "fp32", "group_size": 0}
    header = json.dumps({"config": config, "tensors": tensors}).encode()
    out = b"LLMI" + struct.pack("<IQ", 1, len(header)) + header
    out += b"\0" * (-len(out) % 4096)
    for b in blobs:
        out += b + b"\0" * (-len(b) % 256)
    with open(path, "wb") as f:
        f.write(out)


def check_ctrl_c(name, args, prompt):
    """Starts a long generation, sends SIGINT as soon as text streams out, and expects a clean stop: the
    text so far, the stats line with stop: interrupted, exit status 130, and nothing else on stderr."""
    p = subprocess.Popen([exe] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = b""
    deadline = time.time() + 60
    while len(out) < len(prompt) + 8 and time.time() < deadline:  # the prompt echo, then some tokens
        chunk = os.read(p.stdout.fileno(), 4096)
        if not chunk:
            break
        out += chunk
    p.send_signal(signal.SIGINT)
    rest, err = p.communicate(timeout=60)
    out, err = (out + rest).decode(errors="replace"), err.decode(errors="replace")
    lines = err.strip().splitlines()
    problems = []
    if p.returncode != 130:
        problems.append(f"exit code {p.returncode}, expected 130")
    if len(lines) != 1 or not lines[0].startswith("[stats]") or "stop: interrupted" not in lines[0]:
        problems.append("stderr should be the one stats line with 'stop: interrupted'")
    if not out.startswith(prompt):
        problems.append("stdout does not start with the prompt")
    if problems:
        failures.append(f"{name}: {'; '.join(problems)}\n    stderr: {err.strip()[:300]}")
    else:
        print(f"ok   {name}: exit 130 after {len(out)} bytes of text: {lines[0]}")


with tempfile.TemporaryDirectory() as tmp:
    garbage = os.path.join(tmp, "garbage.bin")
    with open(garbage, "wb") as f:
        f.write(os.urandom(4096))
    truncated = os.path.join(tmp, "truncated.bin")
    with open(stories, "rb") as f, open(truncated, "wb") as g:
        g.write(f.read()[:500000])

    expect_error("no --model", ["--prompt", "hi"], 2, "--model")
    expect_error("missing file", ["--model", "/nonexistent/x.bin"], 1, "/nonexistent/x.bin")
    expect_error("directory as model", ["--model", tmp, "--tokenizer", tok512, "--device", "cpu"], 1,
                 "not a regular file")
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
    expect_error("--tp not dividing the heads", base + ["--tp", "3"], 1, "does not divide the query heads (8)")
    expect_error("--max_seq_len negative", base + ["--max_seq_len", "-5"], 2, "--max_seq_len")
    expect_error("--top_k negative", base + ["--top_k", "-1"], 2, "--top_k")
    expect_error("flag without its value", base + ["--model"], None, "missing its argument")
    expect_error("unknown flag", base + ["--bogus", "1"], None, "bogus")
    expect_error("stray argument", base + ["extra"], 2, "extra")
    expect_error("prompt longer than the context", base + ["--max_seq_len", "8", "--prompt", "Once upon a time " * 10], 1,
                 "context")

    # --device cuda where no GPU can be used: a CPU-only build says so, a CUDA build on a machine
    # without a GPU says that none is visible. (On a GPU machine this run simply works.)
    r = run(base[:-1] + ["cuda", "--n", "2"])
    if r.returncode == 0 and "[stats]" in r.stderr:
        print("ok   --device cuda runs (a GPU is visible here)")
    else:
        expect_error("--device cuda without a GPU", base[:-1] + ["cuda"], 2, "--device cuda: ")

    # Invalid UTF-8 in the prompt: refused by the SentencePiece tokenizer as by the BPE one (bytes pass
    # through argv as they are; os.fsdecode keeps them undecoded).
    bad_utf8 = os.fsdecode(b"Once \xff\xfe upon")
    expect_error("invalid UTF-8 prompt", base + ["--prompt", bad_utf8], 2, "not valid UTF-8")
    expect_error("invalid UTF-8 prompt, --tokenize", ["--tokenizer", tok512, "--tokenize", "--prompt", bad_utf8], 2,
                 "not valid UTF-8")
    expect_error("invalid UTF-8 prompt, --chat", base + ["--chat", "--prompt", bad_utf8], 2, "not valid UTF-8")

    # A KV cache too big for memory: one line saying how much it needs, how much there is, and what to do.
    hungry = os.path.join(tmp, "kv_hungry.bin")
    write_kv_hungry_model(hungry)
    overcommit = open("/proc/sys/vm/overcommit_memory").read().strip()
    if overcommit == "1":
        msg = "KV cache too big: vm.overcommit_memory=1 lets even a 2 TiB allocation succeed"
        if os.environ.get("CI", "").lower() == "true":
            failures.append(f"{msg}; under CI=true this check may not be skipped")  # tools/test.sh
        else:
            print(f"skip {msg}")
    else:
        expect_error("KV cache too big", ["--model", hungry, "--tokenizer", tok512, "--device", "cpu", "--n", "2"], 1,
                     ("the KV cache (8 layers x 4194304 positions) needs 2048.00 GiB in host memory, which has ",
                      " GiB free of ", "; lower --max_seq_len (at most "))
    r = run(["--model", hungry, "--tokenizer", tok512, "--device", "cpu", "--n", "2", "--max_seq_len", "64"])
    if r.returncode != 0 or "[stats]" not in r.stderr:
        failures.append(f"KV cache with --max_seq_len 64: exit {r.returncode}, stderr {r.stderr!r}")
    else:
        print("ok   the same model runs with --max_seq_len 64")

    # Ctrl-C in the middle of a long generation (the default model writes stories of a few hundred tokens).
    storyteller = os.path.join(src_dir, "models", "storyteller.bin")
    check_ctrl_c("Ctrl-C during generation", ["--model", storyteller, "--device", "cpu", "--n", "100000",
                                              "--temperature", "0", "--prompt", "Once upon a time"], "Once upon a time")

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
