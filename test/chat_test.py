#!/usr/bin/env python3
"""llama_infer --chat through a pipe, with a tiny Llama-3-style model (random weights, the real Llama 3
tokenizer), exported here from a Hugging Face folder written with numpy.

Checks: two turns answered, the conversation continued in the KV cache (the second turn feeds only
its own tokens), a single --prompt turn, the context-full message, EOF at once.
usage: chat_test.py BIN_DIR SOURCE_DIR MODELS_DIR     (exit 77 = skipped: MODELS_DIR absent)
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

bin_dir, src_dir, models = sys.argv[1:4]
if not os.path.isdir(models):
    print(f"SKIP: needs {models} (the Llama 3 tokenizer); it is absent")
    sys.exit(77)
exe = os.path.join(bin_dir, "llama_infer")
fixture = json.load(open(os.path.join(src_dir, "test", "fixtures", "chat_ids.json")))["llama3"]["cases"]


def write_hf_model(folder):
    """Llama-3-shaped: GQA, rope theta 500000, tied embeddings, 128256 tokens; 1 layer, width 32."""
    V, D, F, H, KV, hd = 128256, 32, 64, 4, 2, 8
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D,
           "intermediate_size": F, "num_hidden_layers": 1, "num_attention_heads": H,
           "num_key_value_heads": KV, "head_dim": hd, "vocab_size": V, "max_position_embeddings": 256,
           "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True, "hidden_act": "silu",
           "bos_token_id": 128000, "eos_token_id": [128001, 128009]}
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    rng = np.random.default_rng(0)
    t = {"model.embed_tokens.weight": rng.normal(0, 0.5, (V, D)),
         "model.norm.weight": np.ones(D),
         "model.layers.0.input_layernorm.weight": np.ones(D),
         "model.layers.0.post_attention_layernorm.weight": np.ones(D),
         "model.layers.0.self_attn.q_proj.weight": rng.normal(0, 0.3, (H * hd, D)),
         "model.layers.0.self_attn.k_proj.weight": rng.normal(0, 0.3, (KV * hd, D)),
         "model.layers.0.self_attn.v_proj.weight": rng.normal(0, 0.3, (KV * hd, D)),
         "model.layers.0.self_attn.o_proj.weight": rng.normal(0, 0.3, (D, H * hd)),
         "model.layers.0.mlp.gate_proj.weight": rng.normal(0, 0.3, (F, D)),
         "model.layers.0.mlp.up_proj.weight": rng.normal(0, 0.3, (F, D)),
         "model.layers.0.mlp.down_proj.weight": rng.normal(0, 0.3, (D, F))}
    header, blobs, at = {}, [], 0
    for name, a in t.items():
        b = a.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    h = json.dumps(header).encode()
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


failures = []


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))
    if not ok:
        failures.append(name)


with tempfile.TemporaryDirectory() as tmp:
    write_hf_model(tmp)
    model = os.path.join(tmp, "chat3.bin")
    subprocess.run([sys.executable, os.path.join(src_dir, "tools", "export.py"), "-q", "--hf", tmp, "--tokenizer",
                    os.path.join(models, "llama3", "tokenizer.model"), "--dtype", "fp16", model], check=True)
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
