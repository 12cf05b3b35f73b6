#!/usr/bin/env python3
"""Write the fuzzers' seed corpora: test/fuzz/corpus/{model_file,model_header,tokenizer,gguf}.

Every seed is made here from nothing (no third-party data): a tiny SentencePiece model trained on a
few sentences below, a tiny byte-level BPE (tiktoken file and tokenizer.json) merged from the same
text, tiny random llama2.c checkpoints, and model files exported from them by tools/export.py (fp32,
bf16, int8 with SentencePiece; fp16 Llama 3 style with tiktoken), truncated copies, and some of
their JSON headers alone (fuzz_model_header builds a consistent file around a header). The seeds
are small (the whole corpus is about 0.3 MB), so libFuzzer mutates them quickly.

Tokenizer seeds start with the byte that test/fuzz/fuzz_tokenizer.cpp reads as the input kind:
0 SentencePiece, 1 tiktoken, 2 tokenizer.json, 3 text.

GGUF seeds (fuzz_gguf) are tiny Llamas written by the `gguf` package (llama.cpp's writer): F32 with a
SentencePiece vocabulary, Q8_0 and Q4_0, F16 with a byte-level BPE vocabulary and rope_freqs, one of
K-quant widths (Q4_K and Q6_K blocks of random bytes with finite fp16 scales), and cut copies.

    pip install sentencepiece numpy gguf==0.19.0
    python3 tools/make_fuzz_corpus.py [--out test/fuzz/corpus]
"""

import argparse
import base64
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import Counter

import numpy as np
import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))

TEXT = """Once upon a time there was a little girl named Lily. She liked to play in the park.
One day she found a shiny red ball under a tree. "Is this your ball?" she asked a boy.
The boy said, "No, it's not mine." Lily was happy. She played with the ball all day.
Tom had a big brown dog. The dog's name was Max, and Max loved to run and jump.
At night the stars came out and the moon was bright. They went home and slept well.
def main(): return 42  # a line of code, with 123 digits and 4567.89 numbers
Caf\u00e9, na\u00efve, \u00fcber, \u65e5\u672c\u8a9e, \u4e2d\u6587, \U0001f642 and tabs\tand  spaces.
"""

# The special tokens that follow the ranks of a Llama 3 tokenizer (bpe_tokenizer.cpp names them the same).
NAMED_SPECIAL = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 6: "<|start_header_id|>",
                 7: "<|end_header_id|>", 9: "<|eot_id|>"}
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def special_names():
    names, reserved = [], 0
    for i in range(256):
        if i in NAMED_SPECIAL:
            names.append(NAMED_SPECIAL[i])
        else:
            names.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return names


def sentencepiece_model(model_type, vocab_size):
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.splitlines()), model_writer=out, model_type=model_type,
        vocab_size=vocab_size, byte_fallback=True, character_coverage=1.0, num_threads=1,
        normalization_rule_name="identity",  # no 240 KB NFKC table in the model
        hard_vocab_limit=False, minloglevel=2)
    return out.getvalue()


def bpe_tokens(n_merges):
    """Byte-level BPE: the 256 bytes, then n_merges merges of the most frequent adjacent pair."""
    words = [[bytes([b]) for b in w.encode()] for w in TEXT.replace("\n", " \n").split(" ") if w]
    tokens = [bytes([b]) for b in range(256)]
    for _ in range(n_merges):
        pairs = Counter((a, b) for w in words for a, b in zip(w, w[1:]))
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        tokens.append(a + b)
        for w in words:
            i = 0
            while i + 1 < len(w):
                if w[i] == a and w[i + 1] == b:
                    w[i:i + 2] = [a + b]
                i += 1
    return tokens


def tiktoken_file(tokens):
    return b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(tokens))


def tokenizer_json(tokens):
    # GPT-2's byte-to-unicode spelling of each token (printable bytes as themselves, the rest from U+0100).
    kept = [b for b in range(256) if 33 <= b <= 126 or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    spell, shift = {}, 0
    for b in range(256):
        if b in kept:
            spell[b] = chr(b)
        else:
            spell[b] = chr(256 + shift)
            shift += 1
    vocab = {"".join(spell[b] for b in t): i for i, t in enumerate(tokens)}
    n = len(tokens)
    added = [{"id": n + i, "content": name, "special": True} for i, name in enumerate(special_names())]
    return json.dumps({
        "version": "1.0", "added_tokens": added,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "model": {"type": "BPE", "ignore_merges": True, "vocab": vocab, "merges": []},
    }, ensure_ascii=False).encode()


def llama2c_checkpoint(path, dim, hidden, layers, heads, kv_heads, vocab, seq_len, tied, seed):
    rng = np.random.default_rng(seed)
    hd = dim // heads
    kv = kv_heads * hd
    shapes = [(vocab, dim)] + [(layers, dim)] + [(layers, dim, dim), (layers, kv, dim), (layers, kv, dim),
                                                   (layers, dim, dim), (layers, dim), (layers, hidden, dim),
                                                   (layers, dim, hidden), (layers, hidden, dim), (dim,),
                                                   (seq_len * hd,)]
    if not tied:
        shapes.append((vocab, dim))
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab if tied else -vocab, seq_len))
        for s in shapes:
            f.write((rng.standard_normal(s) * 0.3).astype("<f4").tobytes())


def hf_folder(folder, tokens, dim, hidden, layers, heads, kv_heads, seed):
    """A tiny Llama 3 style Hugging Face folder (bf16 safetensors, tied, llama3 RoPE scaling)."""
    rng = np.random.default_rng(seed)
    hd = dim // heads
    vocab = len(tokens) + 256
    shapes = {"model.embed_tokens.weight": (vocab, dim), "model.norm.weight": (dim,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (dim,), p + "post_attention_layernorm.weight": (dim,),
                       p + "self_attn.q_proj.weight": (dim, dim), p + "self_attn.k_proj.weight": (kv_heads * hd, dim),
                       p + "self_attn.v_proj.weight": (kv_heads * hd, dim), p + "self_attn.o_proj.weight": (dim, dim),
                       p + "mlp.gate_proj.weight": (hidden, dim), p + "mlp.up_proj.weight": (hidden, dim),
                       p + "mlp.down_proj.weight": (dim, hidden)})
    header, blobs, at = {}, [], 0
    for name, shape in shapes.items():
        bits = ((rng.standard_normal(shape) * 0.3).astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [at, at + len(bits)]}
        blobs.append(bits)
        at += len(bits)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim,
           "intermediate_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv_heads, "head_dim": hd, "vocab_size": vocab, "max_position_embeddings": 64,
           "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": True,
           "bos_token_id": len(tokens), "eos_token_id": [len(tokens) + 1, len(tokens) + 9],
           "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
        f.write(tiktoken_file(tokens))


def gguf_llama(path, vocab, dim, hidden, layers, heads, kv_heads, kinds, seed, tied=True, rope_freqs=False):
    """A tiny Llama GGUF. vocab: dict(model, tokens, types[, scores, pre], bos, eos). kinds(name) -> ggml type
    of a 2-D weight; K-quant weights are random blocks with finite fp16 scales."""
    import gguf
    QT = gguf.GGMLQuantizationType
    rng = np.random.default_rng(seed)
    hd = dim // heads
    w = gguf.GGUFWriter(path, "llama")
    for fn, v in ((w.add_context_length, 16), (w.add_embedding_length, dim), (w.add_block_count, layers),
                  (w.add_feed_forward_length, hidden), (w.add_head_count, heads), (w.add_head_count_kv, kv_heads),
                  (w.add_rope_freq_base, 10000.0), (w.add_layer_norm_rms_eps, 1e-5)):
        fn(v)
    w.add_tokenizer_model(vocab["model"])
    if "pre" in vocab:
        w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    if "scores" in vocab:
        w.add_token_scores(vocab["scores"])
    w.add_token_types(vocab["types"])
    w.add_bos_token_id(vocab["bos"])
    w.add_eos_token_id(vocab["eos"])
    V = len(vocab["tokens"])

    def weight(name, rows, cols):
        qt = kinds(name)
        if qt in (QT.Q4_K, QT.Q6_K):
            size = 144 if qt == QT.Q4_K else 210
            b = rng.integers(0, 256, size=(rows * cols // 256, size), dtype=np.uint8)
            d = (rng.standard_normal((b.shape[0], 2)) * 0.02).astype(np.float16).view(np.uint8)
            if qt == QT.Q4_K:
                b[:, 0:4] = d
            else:
                b[:, 208:210] = d[:, 0:2]
            w.add_tensor(name, b.reshape(rows, -1), raw_dtype=qt)
            return
        a = (rng.standard_normal((rows, cols)) * 0.3).astype(np.float32)
        if qt == QT.F32:
            w.add_tensor(name, a)
        elif qt == QT.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(a, qt), raw_dtype=qt)

    if rope_freqs:
        w.add_tensor("rope_freqs.weight", np.linspace(1, 8, hd // 2).astype(np.float32))
    weight("token_embd.weight", V, dim)
    for l in range(layers):
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", np.ones(dim, np.float32))
        weight(p + "attn_q.weight", dim, dim)
        weight(p + "attn_k.weight", kv_heads * hd, dim)
        weight(p + "attn_v.weight", kv_heads * hd, dim)
        weight(p + "attn_output.weight", dim, dim)
        w.add_tensor(p + "ffn_norm.weight", np.ones(dim, np.float32))
        weight(p + "ffn_gate.weight", hidden, dim)
        weight(p + "ffn_down.weight", dim, hidden)
        weight(p + "ffn_up.weight", hidden, dim)
    w.add_tensor("output_norm.weight", np.ones(dim, np.float32))
    if not tied:
        weight("output.weight", V, dim)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def sentencepiece_vocab(proto):
    sp = spm.SentencePieceProcessor(model_proto=proto)
    types = []
    for i in range(sp.get_piece_size()):
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1)
    return dict(model="llama", tokens=[sp.id_to_piece(i) for i in range(sp.get_piece_size())],
                scores=[sp.get_score(i) for i in range(sp.get_piece_size())], types=types, bos=sp.bos_id(),
                eos=sp.eos_id())


def bpe_vocab(tokens):
    """Byte-level BPE in GGUF's spelling (GPT-2's byte-to-unicode), the 256 specials last."""
    spelled = json.loads(tokenizer_json(tokens))["model"]["vocab"]
    names = sorted(spelled, key=spelled.get) + special_names()
    n = len(tokens)
    return dict(model="gpt2", pre="llama-bpe", tokens=names, types=[1] * n + [3] * 256, bos=n, eos=n + 1)


def gguf_seeds(folder, sp_proto, tokens):
    import gguf
    QT = gguf.GGMLQuantizationType
    sp = sentencepiece_vocab(sp_proto)
    with tempfile.TemporaryDirectory() as tmp:
        def made(name, **kw):
            path = os.path.join(tmp, name)
            gguf_llama(path, **kw)
            return open(path, "rb").read()
        f32 = made("f32", vocab=sp, dim=16, hidden=32, layers=2, heads=4, kv_heads=2, kinds=lambda n: QT.F32, seed=5,
                   tied=False)
        q8 = made("q8", vocab=sp, dim=32, hidden=64, layers=1, heads=2, kv_heads=1, kinds=lambda n: QT.Q8_0, seed=6)
        q4 = made("q4", vocab=sp, dim=32, hidden=64, layers=1, heads=2, kv_heads=2, kinds=lambda n: QT.Q4_0, seed=7,
                  tied=False)
        bpe = made("bpe", vocab=bpe_vocab(tokens), dim=16, hidden=32, layers=1, heads=2, kv_heads=1,
                   kinds=lambda n: QT.F16, seed=8, rope_freqs=True)
        kq = made("kq", vocab=sp, dim=256, hidden=256, layers=1, heads=4, kv_heads=1, seed=9,
                  kinds=lambda n: QT.Q6_K if "attn_v" in n or "ffn_down" in n else QT.Q4_K)
    seeds = {"sp_f32": f32, "sp_q8_0": q8, "sp_q4_0": q4, "bpe_f16": bpe, "kquant_mixed": kq,
             "q8_0_cut": q8[:len(q8) // 2], "bpe_cut_in_metadata": bpe[:len(bpe) // 3]}
    for name, data in seeds.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return f32


def export(*args):
    subprocess.run([sys.executable, os.path.join(HERE, "export.py"), "--quiet", *args], check=True,
                   stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "..", "test", "fuzz", "corpus"))
    args = ap.parse_args()
    tok_dir, mf_dir = os.path.join(args.out, "tokenizer"), os.path.join(args.out, "model_file")
    hdr_dir = os.path.join(args.out, "model_header")
    gguf_dir = os.path.join(args.out, "gguf")
    for d in (tok_dir, mf_dir, hdr_dir, gguf_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)

    def put(folder, name, data):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)

    sp_bpe = sentencepiece_model("bpe", 360)
    sp_unigram = sentencepiece_model("unigram", 340)
    tokens = bpe_tokens(48)
    put(tok_dir, "sp_bpe", b"\0" + sp_bpe)
    put(tok_dir, "sp_unigram", b"\0" + sp_unigram)
    put(tok_dir, "tiktoken", b"\1" + tiktoken_file(tokens))
    put(tok_dir, "tiktoken_bytes_only", b"\1" + tiktoken_file(tokens[:256]))
    put(tok_dir, "tokenizer_json", b"\2" + tokenizer_json(tokens))
    texts = {"text_english": TEXT.encode(), "text_empty": b"", "text_spaces": b"   \n\n\t  x  \r\n",
             "text_utf8": "\u00e9\u65e5\u672c\U0001f642\u0301 \u05e9\u05dc\u05d5\u05dd".encode(),
             "text_invalid_utf8": b"ok \xff\xfe \xc3 \xed\xa0\x80 \xf4\x90\x80\x80 end",
             "text_specials": b"<|begin_of_text|>hi<|eot_id|><s></s>", "text_digits": b"1234567890 3.14159 1e10"}
    for name, t in texts.items():
        put(tok_dir, name, b"\3" + t)

    with tempfile.TemporaryDirectory() as tmp:
        sp_path = os.path.join(tmp, "sp.model")
        put(tmp, "sp.model", sp_bpe)
        n_sp = spm.SentencePieceProcessor(model_proto=sp_bpe).get_piece_size()
        l2c = os.path.join(tmp, "tiny_l2c.bin")
        llama2c_checkpoint(l2c, dim=16, hidden=32, layers=2, heads=4, kv_heads=2, vocab=n_sp, seq_len=16, tied=True, seed=1)
        untied = os.path.join(tmp, "untied_l2c.bin")
        llama2c_checkpoint(untied, dim=8, hidden=16, layers=1, heads=2, kv_heads=1, vocab=32, seq_len=8, tied=False, seed=2)
        shutil.copy(untied, os.path.join(mf_dir, "llama2c_untied"))
        l2c_bytes = open(l2c, "rb").read()
        put(mf_dir, "llama2c_tied", l2c_bytes)
        put(mf_dir, "llama2c_truncated", l2c_bytes[:len(l2c_bytes) // 2])
        for dtype, extra in (("fp32", []), ("bf16", []), ("int8", ["--group_size", "8"])):
            out = os.path.join(tmp, f"sp_{dtype}.bin")
            export("--llama2c", l2c, "--tokenizer", sp_path, "--dtype", dtype, *extra, out)
            shutil.copy(out, os.path.join(mf_dir, f"llmi_sp_{dtype}"))
        hf = os.path.join(tmp, "hf")
        hf_folder(hf, tokens, dim=16, hidden=48, layers=1, heads=2, kv_heads=1, seed=3)
        out = os.path.join(tmp, "tiktoken_fp16.bin")
        export("--hf", hf, "--dtype", "fp16", out)
        llmi = open(out, "rb").read()
        put(mf_dir, "llmi_tiktoken_fp16", llmi)
        header_len = struct.unpack("<Q", llmi[8:16])[0]
        # fuzz_model_header's seeds: the JSON headers alone (it builds the file around one).
        for name in ("llmi_sp_fp32", "llmi_sp_bf16", "llmi_sp_int8", "llmi_tiktoken_fp16"):
            data = open(os.path.join(mf_dir, name), "rb").read()
            n = struct.unpack("<Q", data[8:16])[0]
            put(hdr_dir, name[len("llmi_"):], data[16:16 + n])
        put(mf_dir, "llmi_header_only", llmi[:16 + header_len])
        put(mf_dir, "llmi_cut_in_data", llmi[:len(llmi) - 1000])
        put(mf_dir, "llmi_cut_in_header", llmi[:16 + header_len // 2])

    # fuzz_model_file reads any format: one GGUF seed there too.
    put(mf_dir, "gguf_sp_f32", gguf_seeds(gguf_dir, sp_bpe, tokens))

    dirs = (tok_dir, mf_dir, hdr_dir, gguf_dir)
    total = sum(os.path.getsize(os.path.join(d, f)) for d in dirs for f in os.listdir(d))
    print(f"wrote {len(os.listdir(tok_dir))} tokenizer, {len(os.listdir(mf_dir))} model-file, "
          f"{len(os.listdir(hdr_dir))} header and {len(os.listdir(gguf_dir))} GGUF seeds ({total / 1024:.0f} KiB) "
          f"under {os.path.normpath(args.out)}")


if __name__ == "__main__":
    main()
