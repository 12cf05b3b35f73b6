#!/usr/bin/env python3
"""CTest fixture setup (FIXTURES_SETUP gguf_exports): GGUF files written by the `gguf` Python package
(llama.cpp's own writer, pinned in tools/setup.sh), for test_gguf to read with the C++ engine.

    python3 test/export_gguf_fixtures.py OUT_DIR [--shared DIR]

Writes into OUT_DIR (emptied first):
  <fixture>.<type>.gguf   every Hugging Face fixture of test/fixtures/hf as f32, f16 and bf16, and as
                          q8_0 and q4_0 (quantized by the gguf package) where every row is whole
                          blocks of 32. Laid out as llama.cpp's converter (convert_hf_to_gguf.py) lays
                          out a Llama: its tensor names, q/k rows permuted back from Hugging Face's
                          rotate-half order to Meta's interleaved pairs, Llama 3.1 scaling as a
                          rope_freqs tensor, the vocabulary of ../shared's tok512.model.
  kq.<type>.gguf          a random Llama whose widths are whole 256-value K-quant blocks (dim 256,
                          hidden 512), as f32 and as q8_0, q4_0, q4_k, q6_k and q4_k_m (q6_k for wv,
                          w2 and the classifier, q4_k elsewhere, as llama.cpp's Q4_K_M mixes them). The
                          gguf package cannot quantize the K-quants: quantize_q4_k / quantize_q6_k below
                          do, simply (min/max per sub-block); their error is what test_gguf measures.
  *.<type>.deq.gguf       beside every quantized model: the same model in F32, each weight what the gguf
                          package dequantizes the quantized one to, so that the quantized kernels can be
                          held to the model the file describes, not only to a loose error bound.
  dequant.<type>.gguf     one tensor of each type (f32, f16, bf16, q8_0, q4_0, q4_k, q6_k), and
  dequant.<type>.f32      its dequantization by gguf.quants.dequantize (raw little-endian fp32): the
                          reference the C++ and CUDA dequantizers must equal bit for bit. q8_0 and q4_0
                          are quantized from random values by the package; the K-quants are random
                          block bytes with finite fp16 scales.
  vocab.<name>.gguf       a tiny model carrying a real vocabulary: llama2 (Llama 2's tokenizer.model),
                          llama3 (Llama 3's tokenizer.json, its merges and chat template), tok512.

Exit status: 0 done; 1 failed; 77 skipped (no ../shared/models, or the gguf / sentencepiece packages
are missing; CTest: SKIP_RETURN_CODE 77).
"""

import argparse
import json
import math
import os
import shutil
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "test", "fixtures", "hf")

try:
    import gguf
    from gguf import GGMLQuantizationType as QT
    import sentencepiece
except ImportError as e:  # tools/setup.sh installs them
    print(f"skipped: {e} (pip install gguf==0.19.0 sentencepiece)")
    sys.exit(77)

TYPES = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0,
         "q4_k": QT.Q4_K, "q6_k": QT.Q6_K}


# ---- reading the Hugging Face fixtures (fp32 safetensors) ----

def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (name, t["dtype"])
        b0, b1 = t["data_offsets"]
        out[name] = np.frombuffer(data[b0:b1], dtype="<f4").reshape(t["shape"])
    return out


def hf_to_meta_rows(w, n_head):
    """llama.cpp's converter's permutation of q/k rows: Hugging Face's rotate-half order back to Meta's
    interleaved pairs (within each head, rows [2, d/2] are read as [d/2, 2])."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(head_dim, theta, rs):
    """Llama 3.1 frequency scaling as the divisors llama.cpp's converter writes to rope_freqs."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


# ---- the K-quants, which the gguf package only dequantizes ----

def quantize_q4_k(w):
    """[rows, cols] -> uint8 [rows, cols / 256 * 144]: per sub-block of 32 a 6-bit scale and min over
    its range, relative to the block's fp16 d and dmin."""
    rows = w.shape[0]
    x = w.astype(np.float32).reshape(-1, 8, 32)
    mn = np.minimum(x.min(-1), 0)
    scale = (x.max(-1) - mn) / 15
    d = (scale.max(-1) / 63).astype(np.float16)
    dmin = ((-mn).max(-1) / 63).astype(np.float16)
    df, dmf = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(df > 0, np.round(scale / df), 0).clip(0, 63).astype(np.uint8)
        m = np.where(dmf > 0, np.round(-mn / dmf), 0).clip(0, 63).astype(np.uint8)
        es, em = (df * sc)[..., None], (dmf * m)[..., None]
        q = np.where(es > 0, np.round((x + em) / es), 0).clip(0, 15).astype(np.uint8)
    s = np.zeros((x.shape[0], 12), np.uint8)
    s[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    s[:, 4:8] = (m[:, 0:4] & 63) | ((m[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (sc[:, 4:8] & 0xF) | ((m[:, 4:8] & 0xF) << 4)
    qs = (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(-1, 128)  # chunk c: sub-blocks 2c (low), 2c+1 (high)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), s, qs], axis=1)
    return blocks.reshape(rows, -1)


def quantize_q6_k(w):
    """[rows, cols] -> uint8 [rows, cols / 256 * 210]: per sub-block of 16 an int8 scale relative to the
    block's fp16 d, values q - 32 in [-32, 31]."""
    rows = w.shape[0]
    x = w.astype(np.float32).reshape(-1, 16, 16)
    scale = np.abs(x).max(-1) / 31
    d = (scale.max(-1) / 127).astype(np.float16)
    df = d.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(df > 0, np.round(scale / df), 0).clip(-128, 127).astype(np.int8)
        es = (df * sc)[..., None]
        q = (np.where(es > 0, np.round(x / es), 0).clip(-32, 31) + 32).astype(np.uint8).reshape(-1, 256)
    ql = np.zeros((q.shape[0], 128), np.uint8)
    qh = np.zeros((q.shape[0], 64), np.uint8)
    for h in range(2):
        v = q[:, 128 * h:128 * h + 128]
        ql[:, 64 * h:64 * h + 64] = (v[:, 0:64] & 0xF) | ((v[:, 64:128] & 0xF) << 4)
        qh[:, 32 * h:32 * h + 32] = ((v[:, 0:32] >> 4) | ((v[:, 32:64] >> 4) << 2) | ((v[:, 64:96] >> 4) << 4)
                                     | ((v[:, 96:128] >> 4) << 6))
    blocks = np.concatenate([ql, qh, sc.view(np.uint8), d.view(np.uint8).reshape(-1, 2)], axis=1)
    return blocks.reshape(rows, -1)


def encode(w, kind):
    """A weight [rows, cols] as (array for GGUFWriter.add_tensor, raw ggml type)."""
    qt = TYPES[kind]
    if kind == "f32":
        return w.astype(np.float32), None
    if kind == "f16":
        return w.astype(np.float16), None
    if kind == "q4_k":
        return quantize_q4_k(w), qt
    if kind == "q6_k":
        return quantize_q6_k(w), qt
    return gguf.quants.quantize(w.astype(np.float32), qt), qt


# ---- vocabularies ----

def sentencepiece_vocab(path):
    """Pieces, scores and piece types of a SentencePiece model, as llama.cpp's converter reads them."""
    sp = sentencepiece.SentencePieceProcessor(model_file=path)
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        t = gguf.TokenType.NORMAL
        if sp.is_unknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            t = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            t = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            t = gguf.TokenType.BYTE
        types.append(t)
    return dict(model="llama", tokens=tokens, scores=scores, types=types, bos=sp.bos_id(), eos=sp.eos_id(),
                unk=sp.unk_id())


# A Llama 2 chat template of the [INST] / <<SYS>> kind (the text is the project's own).
LLAMA2_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'system' %}<<SYS>>\n{{ m['content'] }}\n<</SYS>>\n\n"
                   "{% elif m['role'] == 'user' %}{{ bos_token }}[INST] {{ m['content'] }} [/INST]"
                   "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}")


def llama3_vocab(folder):
    with open(os.path.join(folder, "tokenizer.json")) as f:
        tj = json.load(f)
    with open(os.path.join(folder, "tokenizer_config.json")) as f:
        tc = json.load(f)
    vocab = tj["model"]["vocab"]
    added = {a["id"]: a["content"] for a in tj["added_tokens"]}
    n = len(vocab) + len(added)
    tokens = [None] * n
    types = [gguf.TokenType.NORMAL] * n
    for text, i in vocab.items():
        tokens[i] = text
    for i, text in added.items():
        tokens[i] = text
        types[i] = gguf.TokenType.CONTROL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    return dict(model="gpt2", pre="llama-bpe", tokens=tokens, types=types, merges=merges,
                bos=128000, eos=128001, template=tc["chat_template"])


def add_vocab(w, v):
    w.add_tokenizer_model(v["model"])
    if "pre" in v:
        w.add_tokenizer_pre(v["pre"])
    w.add_token_list(v["tokens"])
    if "scores" in v:
        w.add_token_scores(v["scores"])
    w.add_token_types(v["types"])
    if "merges" in v:
        w.add_token_merges(v["merges"])
    w.add_bos_token_id(v["bos"])
    w.add_eos_token_id(v["eos"])
    if "unk" in v:
        w.add_unk_token_id(v["unk"])
    if v["model"] == "llama":  # tok512 and Llama 2: a dummy prefix; tok512 also collapses spaces
        w.add_add_space_prefix(True)
        w.add_remove_extra_whitespaces(v.get("remove_extra_ws", False))
    if "template" in v:
        w.add_chat_template(v["template"])


# ---- writing models ----

def write_model(path, hp, weights, vocab, kinds, rope_freqs=None, dequantized=False):
    """weights: project names -> fp32 arrays in Meta's layout ([out, in]); kinds(name) -> 'f32', 'q4_k', ...
    dequantized: write each weight as F32 holding what the gguf package dequantizes its `kinds` encoding to
    (the model a quantized file describes, in fp32)."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(hp["ctx"])
    w.add_embedding_length(hp["dim"])
    w.add_block_count(hp["layers"])
    w.add_feed_forward_length(hp["hidden"])
    w.add_head_count(hp["heads"])
    w.add_head_count_kv(hp["kv_heads"])
    w.add_key_length(hp["head_dim"])
    w.add_value_length(hp["head_dim"])
    w.add_rope_dimension_count(hp["head_dim"])
    w.add_rope_freq_base(hp["theta"])
    w.add_layer_norm_rms_eps(hp["eps"])
    w.add_vocab_size(len(vocab["tokens"]))
    add_vocab(w, vocab)
    names = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output"}
    per_layer = {"attention_norm": "attn_norm", "wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
                 "ffn_norm": "ffn_norm", "w1": "ffn_gate", "w2": "ffn_down", "w3": "ffn_up"}
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs)
    for name, a in weights.items():
        if name.startswith("layers."):
            _, l, part = name.split(".")
            gname = f"blk.{l}.{per_layer[part]}.weight"
        else:
            gname = names[name] + ".weight"
        if a.ndim == 1:
            w.add_tensor(gname, a.astype(np.float32))
            continue
        data, raw = encode(a, kinds(name))
        if dequantized:
            data = gguf.quants.dequantize(data, raw if raw is not None else TYPES[kinds(name)]).astype(np.float32)
            raw = None
        w.add_tensor(gname, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def hf_fixture(name):
    folder = os.path.join(FIXTURES, name)
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    t = read_safetensors(os.path.join(folder, "model.safetensors"))
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim", cfg["hidden_size"] // heads)
    rp = cfg["rope_parameters"]
    hp = dict(ctx=cfg["max_position_embeddings"], dim=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
              hidden=cfg["intermediate_size"], heads=heads, kv_heads=kv, head_dim=head_dim,
              theta=rp["rope_theta"], eps=cfg["rms_norm_eps"])
    weights = {"tok_embeddings": t["model.embed_tokens.weight"]}
    for l in range(hp["layers"]):
        p = f"model.layers.{l}."
        weights.update({
            f"layers.{l}.attention_norm": t[p + "input_layernorm.weight"],
            f"layers.{l}.wq": hf_to_meta_rows(t[p + "self_attn.q_proj.weight"], heads),
            f"layers.{l}.wk": hf_to_meta_rows(t[p + "self_attn.k_proj.weight"], kv),
            f"layers.{l}.wv": t[p + "self_attn.v_proj.weight"],
            f"layers.{l}.wo": t[p + "self_attn.o_proj.weight"],
            f"layers.{l}.ffn_norm": t[p + "post_attention_layernorm.weight"],
            f"layers.{l}.w1": t[p + "mlp.gate_proj.weight"],
            f"layers.{l}.w2": t[p + "mlp.down_proj.weight"],
            f"layers.{l}.w3": t[p + "mlp.up_proj.weight"],
        })
    weights["norm"] = t["model.norm.weight"]
    if not cfg["tie_word_embeddings"]:
        weights["output"] = t["lm_head.weight"]
    rope = llama3_rope_factors(head_dim, rp["rope_theta"], rp) if rp["rope_type"] == "llama3" else None
    return hp, weights, rope


def kq_model(seed=1234):
    """A random Llama of K-quant widths, scaled like the HF fixtures (each linear keeps RMS ~1)."""
    rng = np.random.default_rng(seed)
    hp = dict(ctx=256, dim=256, layers=2, hidden=512, heads=4, kv_heads=2, head_dim=64, theta=10000.0, eps=1e-5)
    D, F, Q, KV, V = 256, 512, 256, 128, 512
    lin = lambda o, i: (rng.standard_normal((o, i)) / math.sqrt(i)).astype(np.float32)
    norm = lambda: (1 + 0.2 * rng.standard_normal(D)).astype(np.float32)
    weights = {"tok_embeddings": rng.standard_normal((V, D)).astype(np.float32)}
    for l in range(hp["layers"]):
        weights.update({f"layers.{l}.attention_norm": norm(), f"layers.{l}.wq": lin(Q, D), f"layers.{l}.wk": lin(KV, D),
                        f"layers.{l}.wv": lin(KV, D), f"layers.{l}.wo": lin(D, Q), f"layers.{l}.ffn_norm": norm(),
                        f"layers.{l}.w1": lin(F, D), f"layers.{l}.w2": lin(D, F), f"layers.{l}.w3": lin(F, D)})
    weights["norm"] = norm()
    weights["output"] = lin(V, D)
    return hp, weights


def q4_k_m(name):
    return "q6_k" if name.endswith((".wv", ".w2")) or name == "output" else "q4_k"


def dequant_cases(out_dir, seed=99):
    """One [13, 512] tensor per type and its dequantization by the gguf package."""
    rng = np.random.default_rng(seed)
    rows, cols = 13, 512
    for kind, qt in TYPES.items():
        x = (rng.standard_normal((rows, cols)) * 0.7).astype(np.float32)
        if kind in ("q4_k", "q6_k"):
            size = {"q4_k": 144, "q6_k": 210}[kind]
            blocks = rng.integers(0, 256, size=(rows * cols // 256, size), dtype=np.uint8)
            scales = (rng.standard_normal((blocks.shape[0], 2)) * 0.05).astype(np.float16).view(np.uint8)
            if kind == "q4_k":
                blocks[:, 0:4] = scales  # d and dmin
            else:
                blocks[:, 208:210] = scales[:, 0:2]
            data, raw = blocks.reshape(rows, -1), qt
        elif kind == "f32":
            data, raw = x, None
        elif kind == "f16":
            data, raw = x.astype(np.float16), None
        else:
            data, raw = gguf.quants.quantize(x, qt), qt
        ref = gguf.quants.dequantize(data.view(np.uint8) if raw is not None else data, qt).astype("<f4")
        assert ref.shape == (rows, cols), (kind, ref.shape)
        w = gguf.GGUFWriter(os.path.join(out_dir, f"dequant.{kind}.gguf"), "llama")
        w.add_tensor("blocks", data, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        ref.tofile(os.path.join(out_dir, f"dequant.{kind}.f32"))


def vocab_model(path, vocab, seed=7):
    """A one-layer model of width 64 around a real vocabulary (tied q8_0 embeddings: small files)."""
    rng = np.random.default_rng(seed)
    V, D = len(vocab["tokens"]), 64
    hp = dict(ctx=128, dim=D, layers=1, hidden=64, heads=2, kv_heads=2, head_dim=32, theta=10000.0, eps=1e-5)
    weights = {"tok_embeddings": rng.standard_normal((V, D)).astype(np.float32)}
    for part, shape in (("attention_norm", (D,)), ("wq", (D, D)), ("wk", (D, D)), ("wv", (D, D)), ("wo", (D, D)),
                        ("ffn_norm", (D,)), ("w1", (64, D)), ("w2", (D, 64)), ("w3", (64, D))):
        weights[f"layers.0.{part}"] = (np.ones(shape) if len(shape) == 1 else rng.standard_normal(shape) / 8).astype(np.float32)
    weights["norm"] = np.ones(D, np.float32)
    write_model(path, hp, weights, vocab, lambda name: "q8_0")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--shared", default=os.environ.get("KUIPER_SHARED_DIR") or os.path.join(ROOT, "..", "shared"))
    args = ap.parse_args()
    shutil.rmtree(args.out_dir, ignore_errors=True)
    models = os.path.join(args.shared, "models")
    tok512 = os.path.join(models, "stories260K", "tok512.model")
    if not os.path.isfile(tok512):
        print(f"skipped: needs {os.path.normpath(tok512)} (../shared/models)")
        return 77
    os.makedirs(args.out_dir)
    out = lambda n: os.path.join(args.out_dir, n)
    v512 = sentencepiece_vocab(tok512)
    v512["remove_extra_ws"] = True  # tok512.model collapses runs of spaces (SentencePiece's default)
    made = 0
    for name in sorted(os.listdir(FIXTURES)):
        if not os.path.isfile(os.path.join(FIXTURES, name, "config.json")):
            continue
        hp, weights, rope = hf_fixture(name)
        kinds = ["f32", "f16", "bf16"]
        if all(a.shape[-1] % 32 == 0 for a in weights.values() if a.ndim == 2):
            kinds += ["q8_0", "q4_0"]
        for kind in kinds:
            write_model(out(f"{name}.{kind}.gguf"), hp, weights, v512, lambda n, k=kind: k, rope)
            made += 1
            if kind.startswith("q"):
                write_model(out(f"{name}.{kind}.deq.gguf"), hp, weights, v512, lambda n, k=kind: k, rope, True)
        print(f"{name}: {', '.join(kinds)}")
    hp, weights = kq_model()
    for kind in ("f32", "q8_0", "q4_0", "q4_k", "q6_k", "q4_k_m"):
        kinds = q4_k_m if kind == "q4_k_m" else (lambda n, k=kind: k)
        write_model(out(f"kq.{kind}.gguf"), hp, weights, v512, kinds)
        made += 1
        if kind != "f32":
            write_model(out(f"kq.{kind}.deq.gguf"), hp, weights, v512, kinds, dequantized=True)
    dequant_cases(args.out_dir)
    vocab_model(out("vocab.tok512.gguf"), v512)
    v2 = sentencepiece_vocab(os.path.join(models, "llama2", "tokenizer.model"))
    v2["template"] = LLAMA2_TEMPLATE
    vocab_model(out("vocab.llama2.gguf"), v2)
    vocab_model(out("vocab.llama3.gguf"), llama3_vocab(os.path.join(models, "llama3")))
    print(f"{made} models, {len(TYPES)} dequantization cases and 3 vocabularies in {os.path.normpath(args.out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
