#!/usr/bin/env python3
"""Tests for tools/export.py and tools/model_file.py: plain Python and numpy, no pytest.

    python3 test/test_export.py        (from anywhere; ../shared is found beside the repository,
                                         or set KUIPER_SHARED_DIR)

Exit status: 0 every case passed; 1 a case failed; 77 none failed but a case was skipped because
it needs ../shared/models or test/fixtures/hf (CTest: SKIP_RETURN_CODE 77).

Cases:
  llama2c_fp32_exact    stories260K.bin -> fp32: every tensor bit-identical to the checkpoint
  llama2c_fp16_bf16     fp16 and bf16 exports match numpy's / an independent round-to-nearest-even
  llama2c_int8          int8 scales layout, scale = max|w|/127, q range, dequantised error
  hf_synthetic          numpy-built HF folders (F32 one file, BF16 sharded, v4 and v5 configs):
                        the rotary un-permutation checked index by index and through both RoPE
                        conventions (same q.k scores), every other tensor exact
  chunked_streaming     output is byte-identical whatever the streaming chunk size
  refusals              unsupported configs and options: exit 2, one line, nothing left behind
  tokenizer_json        Llama 3 tokenizer.json -> tiktoken equals Meta's tokenizer.model
  hf_fixtures_forward   test/fixtures/hf (made by tools/make_hf_fixtures.py with transformers):
                        exported fp32 weights run through a float64 numpy Llama reproduce the
                        logits and greedy tokens transformers computed
"""

import contextlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from model_file import ModelFile  # noqa: E402

EXPORT = os.path.join(ROOT, "tools", "export.py")
SHARED = os.environ.get("KUIPER_SHARED_DIR") or os.path.join(ROOT, "..", "shared")
MODELS = os.path.join(SHARED, "models")
STORIES = os.path.join(MODELS, "stories260K", "stories260K.bin")
TOK512 = os.path.join(MODELS, "stories260K", "tok512.model")
FIXTURES = os.path.join(ROOT, "test", "fixtures", "hf")
TMP = tempfile.mkdtemp(prefix="test_export_")


class Skip(Exception):
    pass


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def need(path, what):
    if not os.path.exists(path):
        raise Skip(f"needs {what} at {os.path.normpath(path)}")


def run_export(*args):
    p = subprocess.run([sys.executable, EXPORT, "-q", *map(str, args)], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def export_ok(*args):
    rc, out, err = run_export(*args)
    check(rc == 0, f"export {' '.join(map(str, args))} failed (rc {rc}): {err.strip()}")
    return out


def first_mismatch(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    bad = np.argwhere(a != b)
    if len(bad) == 0:
        return "equal"
    i = tuple(bad[0])
    return f"{len(bad)} differ, first at {i}: {a[i]!r} vs {b[i]!r}"


def check_layout(path, mf):
    """Spec invariants of the file itself, read from the raw bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    check(head[:4] == b"LLMI", "magic")
    version, header_len = struct.unpack("<IQ", head[4:16])
    check(version == 1, f"version {version}")
    check(mf.data_start % 4096 == 0 and mf.data_start >= 16 + header_len, "data_start alignment")
    for t in mf.header["tensors"]:
        check(t["offset"] % 256 == 0, f"{t['name']} offset {t['offset']} not 256-aligned")
    tok = mf.header["tokenizer"]
    check(tok["offset"] % 256 == 0, "tokenizer offset alignment")
    check(os.path.getsize(path) == mf.data_start + tok["offset"] + tok["nbytes"], "file must end at the tokenizer")
    check(mf.check() == [], f"spec problems: {mf.check()}")
    check(not os.path.exists(path + ".tmp"), "a .tmp file was left behind")


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------

def read_llama2c(path):
    """The checkpoint's tensors by our names, parsed here independently of export.py."""
    raw = open(path, "rb").read()
    D, F, L, H, KVH, V, S = struct.unpack("<7i", raw[:28])
    tied, V = V > 0, abs(V)
    hd = D // H
    data = np.frombuffer(raw, dtype="<f4", offset=28)
    out, at = {}, 0

    def take(shape):
        nonlocal at
        n = int(np.prod(shape))
        a = data[at:at + n].reshape(shape)
        at += n
        return a
    out["tok_embeddings"] = take((V, D))
    for kind, shape in (("attention_norm", (D,)), ("wq", (D, D)), ("wk", (KVH * hd, D)), ("wv", (KVH * hd, D)),
                        ("wo", (D, D)), ("ffn_norm", (D,)), ("w1", (F, D)), ("w2", (D, F)), ("w3", (F, D))):
        slab = take((L,) + shape)
        for i in range(L):
            out[f"layers.{i}.{kind}"] = slab[i]
    out["norm"] = take((D,))
    take((S * hd,))  # freq_cis
    if not tied:
        out["output"] = take((V, D))
    check(at == len(data), "reference parse of the llama2.c file did not consume it exactly")
    return (D, F, L, H, KVH, V, S, tied), out


def bf16_round_reference(x):
    """float32 -> bf16 bits by picking the nearer of the two truncations in float64 (ties: even)."""
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    lo = u & np.uint32(0xFFFF0000)
    hi = lo + np.uint32(0x10000)
    d_lo = np.abs(x.astype(np.float64) - lo.view(np.float32).astype(np.float64))
    d_hi = np.abs(hi.view(np.float32).astype(np.float64) - x.astype(np.float64))
    lo_even = ((lo >> 16) & 1) == 0
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & ~lo_even)
    return (np.where(pick_hi, hi, lo) >> 16).astype(np.uint16)


def inv_freq(head_dim, theta, scaling):
    """RoPE frequencies, with Llama 3.1's rule when scaling is set (a float64 reference)."""
    f = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling:
        orig, lo, hi, k = (scaling["original_max_position_embeddings"], scaling["low_freq_factor"],
                           scaling["high_freq_factor"], scaling["factor"])
        wavelen = 2 * np.pi / f
        smooth = (orig / wavelen - lo) / (hi - lo)
        mid = (1 - smooth) * f / k + smooth * f
        f = np.where(wavelen > orig / lo, f / k, np.where(wavelen < orig / hi, f, mid))
    return f


def rope_rotate_half(v, pos, freq):
    """Hugging Face: coordinate j pairs with j + d/2. v [..., d]."""
    half = v.shape[-1] // 2
    ang = pos * freq
    cos, sin = np.concatenate([np.cos(ang)] * 2), np.concatenate([np.sin(ang)] * 2)
    rotated = np.concatenate([-v[..., half:], v[..., :half]], axis=-1)
    return v * cos + rotated * sin


def rope_interleaved(v, pos, freq):
    """Meta / our kernels: coordinates (2j, 2j + 1) pair up. v [..., d]."""
    ang = pos * freq
    c, s = np.cos(ang), np.sin(ang)
    a, b = v[..., 0::2], v[..., 1::2]
    out = np.empty_like(v)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def llama_forward(mf, ids):
    """float64 logits [len(ids), vocab] from an exported file: a plain reading of the Llama math,
    with interleaved RoPE as the format specifies."""
    c = mf.config
    W = lambda n: mf.float32(n).astype(np.float64)  # noqa: E731
    T, hd, nh, nkv, eps = len(ids), c["head_dim"], c["n_heads"], c["n_kv_heads"], c["norm_eps"]
    freq = inv_freq(hd, c["rope_theta"], c["rope_scaling"])
    pos = np.arange(T, dtype=np.float64)[:, None, None]

    def rmsnorm(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    x = W("tok_embeddings")[ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(c["n_layers"]):
        p = f"layers.{i}."
        h = rmsnorm(x, W(p + "attention_norm"))
        q = rope_interleaved((h @ W(p + "wq").T).reshape(T, nh, hd), pos, freq)
        k = rope_interleaved((h @ W(p + "wk").T).reshape(T, nkv, hd), pos, freq)
        v = (h @ W(p + "wv").T).reshape(T, nkv, hd)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)  # query head j uses kv j // rep
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        a = np.exp(s - s.max(axis=-1, keepdims=True))
        a /= a.sum(axis=-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", a, v).reshape(T, nh * hd) @ W(p + "wo").T
        h = rmsnorm(x, W(p + "ffn_norm"))
        g = h @ W(p + "w1").T
        x = x + ((g / (1 + np.exp(-g))) * (h @ W(p + "w3").T)) @ W(p + "w2").T
    x = rmsnorm(x, W("norm"))
    return x @ W("tok_embeddings" if c["tied_embeddings"] else "output").T


# ---------------------------------------------------------------------------------------------
# Synthetic inputs
# ---------------------------------------------------------------------------------------------

def write_safetensors(path, tensors, pad=True):
    """Minimal safetensors writer: {name: (dtype "F32"/"F16"/"BF16", array of that storage)}."""
    header, blobs, at = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (dtype, a) in tensors.items():
        b = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    h = json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def write_sentencepiece(path, n):
    """A structurally valid SentencePiece ModelProto with n pieces (field 1: piece, field 2: score)."""
    def ld(field, payload):  # length-delimited field
        out, n_ = bytes([field << 3 | 2]), len(payload)
        while n_ >= 0x80:
            out += bytes([n_ & 0x7F | 0x80])
            n_ >>= 7
        return out + bytes([n_]) + payload
    pieces = b"".join(ld(1, ld(1, f"p{i}".encode()) + b"\x15" + struct.pack("<f", -i)) for i in range(n))
    with open(path, "wb") as f:
        f.write(pieces)


def write_tiktoken(path, n):
    import base64
    with open(path, "wb") as f:
        for i in range(n):
            f.write(base64.b64encode(bytes([i % 256]) * (1 + i // 256)) + f" {i}\n".encode())


def make_hf_folder(folder, *, dim, heads, kv_heads, head_dim, hidden, layers, vocab, tied, store, v5,
                   rope_scaling=None, theta=10000.0, shards=1, extra_lm_head=False, seed=0, pad=True):
    """A random HF Llama folder. store: "F32" or "BF16". Returns {hf name: float32 array}."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    Q, KV = heads * head_dim, kv_heads * head_dim
    shapes = {"model.embed_tokens.weight": (vocab, dim), "model.norm.weight": (dim,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (dim,), p + "post_attention_layernorm.weight": (dim,),
                       p + "self_attn.q_proj.weight": (Q, dim), p + "self_attn.k_proj.weight": (KV, dim),
                       p + "self_attn.v_proj.weight": (KV, dim), p + "self_attn.o_proj.weight": (dim, Q),
                       p + "mlp.gate_proj.weight": (hidden, dim), p + "mlp.up_proj.weight": (hidden, dim),
                       p + "mlp.down_proj.weight": (dim, hidden)})
    if not tied or extra_lm_head:
        shapes["lm_head.weight"] = (vocab, dim)
    values = {}
    for name, shape in shapes.items():
        a = rng.standard_normal(shape).astype(np.float32) * (0.2 if len(shape) == 2 else 1.0)
        if store == "BF16":  # make the values exactly representable, so fp32 export is exact
            a = (bf16_round_reference(a).astype(np.uint32) << 16).view(np.float32)
        values[name] = a
    stored = {n: (store, bf16_round_reference(a) if store == "BF16" else a) for n, a in values.items()}
    names = list(stored)
    if shards == 1:
        write_safetensors(os.path.join(folder, "model.safetensors"), stored, pad)
    else:
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = names[s::shards]
            write_safetensors(os.path.join(folder, fname), {n: stored[n] for n in part}, pad)
            weight_map.update({n: fname for n in part})
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim,
           "intermediate_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv_heads, "head_dim": head_dim, "vocab_size": vocab,
           "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "hidden_act": "silu",
           "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2,
           "attention_bias": False, "mlp_bias": False}
    if v5:
        cfg["rope_parameters"] = dict(rope_scaling or {"rope_type": "default"}, rope_theta=theta)
    else:
        cfg["rope_theta"], cfg["rope_scaling"] = theta, rope_scaling
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return values, cfg


LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 32}


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

def test_llama2c_fp32_exact():
    need(STORIES, "stories260K.bin")
    need(TOK512, "tok512.model")
    out = os.path.join(TMP, "stories_fp32.bin")
    export_ok("--llama2c", STORIES, "--tokenizer", TOK512, "--dtype", "fp32", out)
    mf = ModelFile(out)
    check_layout(out, mf)
    (D, F, L, H, KVH, V, S, tied), ref = read_llama2c(STORIES)
    c = mf.config
    want = {"family": "llama2", "dim": D, "hidden_dim": F, "n_layers": L, "n_heads": H, "n_kv_heads": KVH,
            "head_dim": D // H, "vocab_size": V, "max_seq_len": S, "norm_eps": 1e-5, "rope_theta": 10000.0,
            "rope_scaling": None, "tied_embeddings": tied, "bos_id": 1, "weight_dtype": "fp32", "group_size": 0}
    for k, v in want.items():
        check(c[k] == v, f"config.{k} = {c[k]!r}, expected {v!r}")
    check(c["eos_ids"][0] == 2, f"eos_ids {c['eos_ids']}")
    check(set(mf.tensors) == set(ref), f"tensor names differ: {sorted(set(mf.tensors) ^ set(ref))}")
    for name, a in ref.items():
        got = mf.raw(name)
        check(got.dtype == np.float32 and np.array_equal(got, a), f"{name}: {first_mismatch(got, a)}")
    check(mf.tokenizer_type == "sentencepiece", "tokenizer type")
    check(mf.tokenizer_blob() == open(TOK512, "rb").read(), "tokenizer blob is not tok512.model byte for byte")


def test_llama2c_fp16_bf16():
    need(STORIES, "stories260K.bin")
    need(TOK512, "tok512.model")
    _, ref = read_llama2c(STORIES)
    for dtype in ("fp16", "bf16"):
        out = os.path.join(TMP, f"stories_{dtype}.bin")
        export_ok("--llama2c", STORIES, "--tokenizer", TOK512, "--dtype", dtype, out)
        mf = ModelFile(out)
        check_layout(out, mf)
        for name, a in ref.items():
            got = mf.raw(name)
            if name.endswith("norm"):
                want = a
            elif dtype == "fp16":
                want = a.astype(np.float16)
            else:
                want = bf16_round_reference(a)
            check(got.dtype == want.dtype and np.array_equal(got, want), f"{dtype} {name}: {first_mismatch(got, want)}")


def test_llama2c_int8():
    need(STORIES, "stories260K.bin")
    need(TOK512, "tok512.model")
    _, ref = read_llama2c(STORIES)
    # stories260K: dim 64, hidden_dim 172 = 4 * 43, so 4 is the largest group size the spec allows.
    out = os.path.join(TMP, "stories_int8.bin")
    log = export_ok("--llama2c", STORIES, "--tokenizer", TOK512, "--dtype", "int8", "--group_size", 4, out)
    check("relative error" in log, "the exporter must print the int8 relative error")
    mf = ModelFile(out)
    check_layout(out, mf)
    check(mf.config["weight_dtype"] == "int8" and mf.config["group_size"] == 4, "int8 config")
    check(np.array_equal(mf.raw("tok_embeddings"), ref["tok_embeddings"].astype(np.float16)), "tok_embeddings fp16")
    for name, w in ref.items():
        if name.endswith("norm"):
            check(np.array_equal(mf.raw(name), w), f"{name} must stay exact fp32")
            continue
        if name == "tok_embeddings":
            continue
        q, s = mf.raw(name), mf.raw(name + ".scales")
        R, C = w.shape
        check(q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (R, C // 4), f"{name} q/scales layout")
        g = w.reshape(R, C // 4, 4)
        check(np.array_equal(s, (np.abs(g).max(axis=2) / np.float32(127)).astype(np.float32)),
              f"{name}: scales are not max|w|/127 per group of 4 along a row")
        check(q.min() >= -127, f"{name}: -128 must not be used (symmetric range)")
        nz = s > 0
        check(np.all(np.abs(q.reshape(R, C // 4, 4)).max(axis=2)[nz] == 127), f"{name}: a group's max must map to 127")
        deq = mf.float32(name)
        check(np.all(np.abs(deq - w) <= s.repeat(4, axis=1) * 0.5 * (1 + 1e-5)),
              f"{name}: error beyond half a quantization step")
        rel = np.linalg.norm(deq - w) / np.linalg.norm(w)
        check(rel < 0.01, f"{name}: relative error {rel:.4f}")
    rc, _, err = run_export("--llama2c", STORIES, "--tokenizer", TOK512, "--dtype", "int8",
                            os.path.join(TMP, "g64.bin"))
    check(rc == 2 and "group_size 64" in err, f"default group 64 must be refused for hidden_dim 172: rc {rc} {err}")


def check_rotary(name, exported, hf, n_heads, hd):
    """Exported rows are Meta's interleaved order: meta row 2j + p = HF row p * hd/2 + j."""
    for h in range(n_heads):
        for j in range(hd // 2):
            for p in (0, 1):
                if not np.array_equal(exported[h * hd + 2 * j + p], hf[h * hd + p * hd // 2 + j]):
                    raise Fail(f"{name}: head {h} pair {j} part {p} is not HF row {p * hd // 2 + j}")


def check_scores(mf, values, layer, freq, rng):
    """q.k through HF's rotate-half on the HF weights == through interleaved RoPE on ours."""
    c = mf.config
    nh, nkv, hd, D = c["n_heads"], c["n_kv_heads"], c["head_dim"], c["dim"]
    p = f"model.layers.{layer}.self_attn."
    wq_hf, wk_hf = values[p + "q_proj.weight"].astype(np.float64), values[p + "k_proj.weight"].astype(np.float64)
    wq, wk = mf.float32(f"layers.{layer}.wq").astype(np.float64), mf.float32(f"layers.{layer}.wk").astype(np.float64)
    rep = nh // nkv
    for pq, pk in ((0, 0), (5, 2), (31, 7), (200, 3)):
        x1, x2 = rng.standard_normal(D), rng.standard_normal(D)

        def scores(Wq, Wk, rope):
            q = rope((Wq @ x1).reshape(nh, hd), pq, freq)
            k = rope((Wk @ x2).reshape(nkv, hd), pk, freq)
            return np.array([q[h] @ k[h // rep] for h in range(nh)])
        hf = scores(wq_hf, wk_hf, rope_rotate_half)
        ours = scores(wq, wk, rope_interleaved)
        check(np.allclose(ours, hf, rtol=1e-10, atol=1e-10),
              f"layer {layer} positions {pq},{pk}: scores {ours} vs HF {hf}")
        # Negative control: without the un-permutation the interleaved scores would be wrong.
        wrong = scores(wq_hf, wk_hf, rope_interleaved)
        if (pq, pk) != (0, 0):
            check(not np.allclose(wrong, hf, rtol=1e-3), "negative control: the score test has no power")


def test_hf_synthetic():
    rng = np.random.default_rng(7)
    tik = os.path.join(TMP, "tiny.tiktoken")
    write_tiktoken(tik, 256)             # 256 ranks + 256 specials = 512 ids: llama3 family
    spm = os.path.join(TMP, "tiny_sp.model")
    write_sentencepiece(spm, 300)        # llama2 family
    variants = [
        # v5 config, F32, GQA, head_dim 24 != dim / heads, llama3 rope scaling, untied.
        dict(name="f32_gqa", tok=tik, family="llama3",
             kw=dict(dim=64, heads=4, kv_heads=2, head_dim=24, hidden=96, layers=2, vocab=512, tied=False,
                     store="F32", v5=True, rope_scaling=LLAMA3_SCALING, theta=500000.0)),
        # v4 config, BF16 in 3 shards with unpadded headers, MHA, tied with a stray lm_head copy.
        dict(name="bf16_sharded", tok=spm, family="llama2",
             kw=dict(dim=48, heads=3, kv_heads=3, head_dim=16, hidden=80, layers=3, vocab=320, tied=True,
                     store="BF16", v5=False, shards=3, extra_lm_head=True, pad=False, theta=1e6)),
    ]
    for var in variants:
        folder = os.path.join(TMP, "hf_" + var["name"])
        values, cfg = make_hf_folder(folder, seed=len(var["name"]), **var["kw"])
        with open(os.path.join(folder, "generation_config.json"), "w") as f:
            json.dump({"eos_token_id": [2, 9]}, f)
        kw = var["kw"]
        hd = kw["head_dim"]
        scaling = kw.get("rope_scaling")
        for dtype in ("fp32", "bf16", "int8"):
            out = os.path.join(TMP, f"{var['name']}_{dtype}.bin")
            args = ["--hf", folder, "--tokenizer", var["tok"], "--dtype", dtype, out]
            if dtype == "int8":
                args[-1:-1] = ["--group_size", 16]
            export_ok(*args)
            mf = ModelFile(out)
            check_layout(out, mf)
            c = mf.config
            check(c["family"] == var["family"], f"family {c['family']}")
            check(c["head_dim"] == hd and c["rope_theta"] == kw["theta"], "head_dim / rope_theta")
            check(c["eos_ids"] == [2, 9], f"eos_ids {c['eos_ids']} must merge generation_config.json")
            check(c["tied_embeddings"] == kw["tied"] and ("output" in mf.tensors) != kw["tied"], "tying")
            if scaling:
                want = {"type": "llama3", **{k: v for k, v in scaling.items() if k != "rope_type"}}
                check(c["rope_scaling"] == want, f"rope_scaling {c['rope_scaling']} != {want}")
            else:
                check(c["rope_scaling"] is None, "rope_scaling must be null")
            if dtype == "int8":
                check(c["group_size"] == 16, "group size")
                for i in range(kw["layers"]):
                    w = values[f"model.layers.{i}.mlp.down_proj.weight"]
                    rel = np.linalg.norm(mf.float32(f"layers.{i}.w2") - w) / np.linalg.norm(w)
                    check(rel < 0.02, f"{var['name']} int8 layers.{i}.w2 relative error {rel:.4f}")
                continue
            names = {"tok_embeddings": "model.embed_tokens.weight", "norm": "model.norm.weight"}
            if not kw["tied"]:
                names["output"] = "lm_head.weight"
            for i in range(kw["layers"]):
                for ours, theirs in (("attention_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm"),
                                     ("wq", "self_attn.q_proj"), ("wk", "self_attn.k_proj"),
                                     ("wv", "self_attn.v_proj"), ("wo", "self_attn.o_proj"),
                                     ("w1", "mlp.gate_proj"), ("w2", "mlp.down_proj"), ("w3", "mlp.up_proj")):
                    names[f"layers.{i}.{ours}"] = f"model.layers.{i}.{theirs}.weight"
            for ours, theirs in names.items():
                src = values[theirs]
                got = mf.float32(ours)
                if dtype == "bf16" and not ours.endswith("norm"):
                    # bf16 out of exactly-bf16 (or rounded) values: the bits must be the rounding.
                    src = (bf16_round_reference(src).astype(np.uint32) << 16).view(np.float32)
                if ours.endswith(".wq") or ours.endswith(".wk"):
                    n = kw["heads"] if ours.endswith(".wq") else kw["kv_heads"]
                    check_rotary(f"{var['name']} {dtype} {ours}", got, src, n, hd)
                else:
                    check(np.array_equal(got, src), f"{var['name']} {dtype} {ours}: {first_mismatch(got, src)}")
            if dtype == "fp32":
                for i in range(kw["layers"]):
                    check_scores(mf, values, i, inv_freq(hd, kw["theta"], scaling), rng)


def test_refusals():
    tik = os.path.join(TMP, "ref.tiktoken")
    write_tiktoken(tik, 256)
    base = dict(dim=32, heads=2, kv_heads=1, head_dim=16, hidden=64, layers=1, vocab=512, tied=False, store="F32",
                v5=True)
    cases = [  # (what, config patch, extra args, tensors patch, expected rc)
        ("mistral", {"model_type": "mistral"}, [], None, 2),
        ("architecture", {"architectures": ["LlamaForSequenceClassification"]}, [], None, 2),
        ("attention_bias", {"attention_bias": True}, [], None, 2),
        ("mlp_bias", {"mlp_bias": True}, [], None, 2),
        ("gelu", {"hidden_act": "gelu"}, [], None, 2),
        ("v4 linear scaling", {"rope_scaling": {"type": "linear", "factor": 2.0}}, [], None, 2),
        ("v5 yarn", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, [], None, 2),
        ("partial rotary", {"partial_rotary_factor": 0.5}, [], None, 2),
        ("quantized", {"quantization_config": {"quant_method": "gptq"}}, [], None, 2),
        ("group 48", {}, ["--dtype", "int8", "--group_size", 48], None, 2),
        ("group without int8", {}, ["--group_size", 32], None, 2),
        ("vocab too small", {"vocab_size": 511}, [], None, 2),
        ("bias tensor", {}, [], {"model.layers.0.self_attn.q_proj.bias": np.zeros(32, np.float32)}, 2),
        ("fp16 overflow", {}, [], {"model.layers.0.mlp.up_proj.weight": np.full((64, 32), 1e6, np.float32)}, 2),
        ("missing tensor", {}, [], {"model.layers.0.mlp.up_proj.weight": None}, 1),
        ("wrong shape", {}, [], {"model.norm.weight": np.ones(31, np.float32)}, 1),
    ]
    for what, patch, extra, tensors, want_rc in cases:
        folder = os.path.join(TMP, "refuse")
        shutil.rmtree(folder, ignore_errors=True)
        values, cfg = make_hf_folder(folder, **base)
        cfg.update(patch)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(cfg, f)
        if tensors:
            for k, v in tensors.items():
                if v is None:
                    values.pop(k)
                else:
                    values[k] = v
            write_safetensors(os.path.join(folder, "model.safetensors"), {k: ("F32", v) for k, v in values.items()})
        out = os.path.join(TMP, "refused.bin")
        rc, _, err = run_export("--hf", folder, "--tokenizer", tik, *extra, out)
        lines = err.strip().splitlines()
        check(rc == want_rc, f"{what}: exit {rc}, expected {want_rc} ({err.strip()})")
        check(len(lines) == 1 and lines[0].startswith("export.py: "), f"{what}: message must be one line: {err!r}")
        check(not os.path.exists(out) and not os.path.exists(out + ".tmp"), f"{what}: output left behind")
    # No tokenizer anywhere, and a llama2.c export without --tokenizer.
    folder = os.path.join(TMP, "notok")
    make_hf_folder(folder, **base)
    rc, _, err = run_export("--hf", folder, os.path.join(TMP, "x.bin"))
    check(rc == 2 and "--tokenizer" in err, f"missing tokenizer: rc {rc} {err}")
    rc, _, err = run_export("--llama2c", os.path.join(TMP, "nothing.bin"), os.path.join(TMP, "x.bin"))
    check(rc == 2 and "--tokenizer" in err, f"llama2.c without tokenizer: rc {rc} {err}")


def test_chunked_streaming():
    """Tiny chunks (several per tensor, wq/wk cut on head boundaries, int8 scales written in step
    with their rows) must give byte-identical files to one chunk per tensor."""
    import export
    folder = os.path.join(TMP, "hf_chunks")
    make_hf_folder(folder, dim=64, heads=4, kv_heads=2, head_dim=24, hidden=96, layers=1, vocab=512, tied=False,
                   store="BF16", v5=True, rope_scaling=LLAMA3_SCALING, seed=3)
    tik = os.path.join(TMP, "chunks.tiktoken")
    write_tiktoken(tik, 256)
    saved = export.CHUNK_BYTES
    try:
        for dtype in ("fp32", "fp16", "int8"):
            files = []
            for chunk in (saved, 2048):
                export.CHUNK_BYTES = chunk
                out = os.path.join(TMP, f"chunks_{dtype}_{chunk}.bin")
                with contextlib.redirect_stdout(io.StringIO()):
                    rc = export.main(["-q", "--hf", folder, "--tokenizer", tik, "--dtype", dtype, out]
                                     + (["--group_size", "32"] if dtype == "int8" else []))
                check(rc == 0, f"{dtype} with {chunk}-byte chunks: rc {rc}")
                files.append(open(out, "rb").read())
            check(files[0] == files[1], f"{dtype}: output depends on the chunk size")
    finally:
        export.CHUNK_BYTES = saved


def test_tokenizer_json():
    src = os.path.join(MODELS, "llama3", "tokenizer.json")
    need(src, "the Llama 3 tokenizer.json")
    import export
    blob = export.tokenizer_json_to_tiktoken(src)
    want = open(os.path.join(MODELS, "llama3", "tokenizer.model"), "rb").read()
    check(blob == want, "tokenizer.json converted to tiktoken differs from Meta's tokenizer.model")
    tok = export.load_tokenizer(src)
    check(tok.type == "tiktoken" and tok.n_tokens == 128256, f"{tok.type} {tok.n_tokens}")


def test_hf_fixtures_forward():
    need(FIXTURES, "HF fixtures (tools/make_hf_fixtures.py)")
    names = sorted(n for n in os.listdir(FIXTURES) if os.path.isfile(os.path.join(FIXTURES, n, "expected.json")))
    check(names, "no fixtures with expected.json")
    spm = os.path.join(TMP, "fixture_sp.model")
    write_sentencepiece(spm, 512)  # a stand-in: the fixtures have vocab 512 and carry no tokenizer
    for name in names:
        exp = json.load(open(os.path.join(FIXTURES, name, "expected.json")))
        out = os.path.join(TMP, f"fixture_{name}.bin")
        export_ok("--hf", os.path.join(FIXTURES, name), "--tokenizer", spm, "--dtype", "fp32", out)
        mf = ModelFile(out)
        check_layout(out, mf)
        ids = exp["input_ids"]
        logits = llama_forward(mf, ids)
        ref = np.array(exp["logits"], dtype=np.float64)
        # HF ran in fp32, this in float64: differences are fp32 rounding, ~1e-6 of the logit scale.
        err = np.abs(logits - ref)
        tol = 1e-4 + 1e-4 * np.abs(ref)
        if not np.all(err <= tol):
            i = np.unravel_index(np.argmax(err - tol), err.shape)
            raise Fail(f"{name}: logits differ from transformers, worst at {i}: {logits[i]:.6f} vs {ref[i]:.6f}")
        seq = list(ids)
        for _ in exp["greedy_ids"]:
            seq.append(int(np.argmax(llama_forward(mf, seq)[-1])))
        got = seq[len(ids):]
        check(got == exp["greedy_ids"], f"{name}: greedy {got} vs transformers {exp['greedy_ids']}")
        print(f"  {name}: max |logit diff| {err.max():.2e}, greedy {len(got)} tokens match "
              f"(min top-2 gap {exp['min_top2_gap']:.3f})")


CASES = [test_llama2c_fp32_exact, test_llama2c_fp16_bf16, test_llama2c_int8, test_hf_synthetic,
         test_chunked_streaming, test_refusals, test_tokenizer_json, test_hf_fixtures_forward]


def main() -> int:
    passed = failed = skipped = 0
    try:
        for case in CASES:
            name = case.__name__[len("test_"):]
            try:
                case()
                print(f"PASS {name}", flush=True)
                passed += 1
            except Skip as e:
                print(f"SKIP {name}: {e}", flush=True)
                skipped += 1
            except Fail as e:
                print(f"FAIL {name}: {e}", flush=True)
                failed += 1
            except Exception:
                print(f"FAIL {name}: unexpected exception\n{traceback.format_exc()}", flush=True)
                failed += 1
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 77 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
