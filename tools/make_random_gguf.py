#!/usr/bin/env python3
"""Writes a GGUF file of a Llama shape with random weights, for speed runs side by side with llama.cpp
on the same file (random weights read the same bytes as real ones).

    python3 tools/make_random_gguf.py --shape llama2-7b --type q4_k_m --out /dev/shm/llama2-7b-q4_k_m.gguf

--type: f16, bf16, q8_0, q4_0, q4_k_m. q4_k_m mixes the block types the way llama.cpp's Q4_K_M files do:
q4_k everywhere except q6_k for the classifier and for attn_v / ffn_down in the first and last eighth
of the layers and every third layer between (llama.cpp's "use more bits" rule). Quantized blocks are
random bytes whose fp16 scales are set to small finite values; a 64 MiB pool per type is reused, so
a 7B file takes seconds. The vocabulary is a placeholder (byte tokens and numbered pieces).
Needs numpy and the `gguf` package (pip install gguf; it is pure Python, so it can be carried to a
machine without a package index: put its folder on PYTHONPATH).
"""
import argparse
import sys

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("make_random_gguf: the gguf package is missing (pip install gguf)")

SHAPES = {  # dim, hidden, layers, heads, kv heads, vocab, context, rope theta
    "llama2-7b": (4096, 11008, 32, 32, 32, 32000, 4096, 10000.0),
    "llama3-8b": (4096, 14336, 32, 32, 8, 128256, 8192, 500000.0),
    "tiny": (256, 768, 2, 4, 2, 1024, 512, 10000.0),  # vocab: room for the placeholder's 616 pieces
}

Q = gguf.GGMLQuantizationType
# (elements, bytes) of a block, and the byte offsets of its fp16 scale fields.
BLOCKS = {Q.Q8_0: (32, 34, [0]), Q.Q4_0: (32, 18, [0]), Q.Q4_K: (256, 144, [0, 2]), Q.Q6_K: (256, 210, [208])}


class Pool:
    """Random blocks of one type, 64 MiB, with every scale a finite fp16 in [0.0005, 0.004)."""

    def __init__(self, qtype, rng):
        elems, nbytes, scale_at = BLOCKS[qtype]
        n = (64 << 20) // nbytes
        blocks = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
        for off in scale_at:
            d = rng.uniform(0.0005, 0.004, size=n).astype(np.float16)
            blocks[:, off:off + 2] = d.view(np.uint8).reshape(n, 2)
        self.flat = blocks.reshape(-1)
        self.elems, self.nbytes = elems, nbytes

    def tensor(self, rows, cols):
        assert cols % self.elems == 0, (rows, cols)
        row_bytes = cols // self.elems * self.nbytes
        total = rows * row_bytes
        reps = -(-total // self.flat.size)
        data = np.tile(self.flat, reps)[:total] if reps > 1 else self.flat[:total]
        return data.reshape(rows, row_bytes)


def more_bits(layer, n_layers):
    eighth = n_layers // 8
    return layer < eighth or layer >= 7 * eighth or (layer - eighth) % 3 == 2


def plan(shape, wtype):
    """(name, rows, cols, type) of every tensor; type None: F32 (norms), "f16": F16."""
    dim, hidden, n_layers, heads, kv_heads, vocab, _, _ = SHAPES[shape]
    head_dim = dim // heads
    kinds = {"f16": ("f16", "f16", "f16"), "bf16": ("bf16", "bf16", "bf16"), "q8_0": (Q.Q8_0, Q.Q8_0, Q.Q8_0), "q4_0": (Q.Q4_0, Q.Q4_0, Q.Q4_0)}
    out = []
    if wtype == "q4_k_m":
        emb, cls = Q.Q4_K, Q.Q6_K
    else:
        emb, cls, _ = kinds[wtype]
    out.append(("token_embd.weight", vocab, dim, emb))
    for i in range(n_layers):
        base = Q.Q4_K if wtype == "q4_k_m" else kinds[wtype][0]
        big = Q.Q6_K if wtype == "q4_k_m" and more_bits(i, n_layers) else base
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", 1, dim, None),
                (p + "attn_q.weight", heads * head_dim, dim, base),
                (p + "attn_k.weight", kv_heads * head_dim, dim, base),
                (p + "attn_v.weight", kv_heads * head_dim, dim, big),
                (p + "attn_output.weight", dim, heads * head_dim, base),
                (p + "ffn_norm.weight", 1, dim, None),
                (p + "ffn_gate.weight", hidden, dim, base),
                (p + "ffn_up.weight", hidden, dim, base),
                (p + "ffn_down.weight", dim, hidden, big)]
    out += [("output_norm.weight", 1, dim, None), ("output.weight", vocab, dim, cls)]
    return out


# Words of tools/loadgen.py's prompts: the placeholder vocabulary holds every substring of " word" as a
# piece (longer ones scoring higher, so the BPE merges reach the whole word), so that a load-generator
# prompt of N words is about N tokens, as with a real vocabulary.
WORDS = ("time dog cat tree house river stone light night story happy small big green blue red friend "
         "play run jump sing walk park ball book moon star sun rain wind snow bird fish boat road hill").split()


def vocabulary(n):
    toks, scores, types = [b"<unk>", b"<s>", b"</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        toks.append(f"<0x{b:02X}>".encode())
        scores.append(0.0)
        types.append(6)
    pieces = {}
    for word in WORDS:
        w = "\u2581" + word
        for a in range(len(w)):
            for b in range(a + 1, len(w) + 1):
                pieces[w[a:b]] = max(pieces.get(w[a:b], -1e9), float(b - a))
    for piece, score in sorted(pieces.items()):
        toks.append(piece.encode())
        scores.append(score)
        types.append(1)
    if len(toks) > n:  # the file's embedding rows must match its vocabulary (llama.cpp checks)
        sys.exit(f"make_random_gguf: a vocabulary of {n} cannot hold the placeholder's {len(toks)} pieces")
    i = 0
    while len(toks) < n:
        toks.append(f"\u2581t{i}".encode())
        scores.append(-float(i))
        types.append(1)
        i += 1
    return toks, scores, types


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--type", choices=["f16", "bf16", "q8_0", "q4_0", "q4_k_m"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    dim, hidden, n_layers, heads, kv_heads, vocab, ctx, theta = SHAPES[args.shape]
    rng = np.random.default_rng(args.seed)
    tensors = plan(args.shape, args.type)
    pools = {}
    f16_pool = (rng.standard_normal(16 << 20) * 0.02).astype(np.float16)
    bf16_pool = ((rng.standard_normal(16 << 20) * 0.02).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)

    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name(f"random-{args.shape}-{args.type}")
    w.add_context_length(ctx)
    w.add_embedding_length(dim)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(hidden)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(dim // heads)
    w.add_vocab_size(vocab)
    file_types = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                  "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M}
    w.add_file_type(int(file_types[args.type]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    toks, scores, types = vocabulary(vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def data(rows, cols, t):
        if t is None:
            return np.ones(cols, dtype=np.float32)
        if t in ("f16", "bf16"):
            pool = f16_pool if t == "f16" else bf16_pool
            total = rows * cols
            reps = -(-total // pool.size)
            flat = np.tile(pool, reps)[:total] if reps > 1 else pool[:total]
            return flat.reshape(rows, cols) if t == "f16" else flat.reshape(rows, cols).view(np.uint8)
        if t not in pools:
            pools[t] = Pool(t, rng)
        return pools[t].tensor(rows, cols)

    for name, rows, cols, t in tensors:  # the table first, then the data tensor by tensor
        if t is None:
            w.add_tensor_info(name, [cols], np.dtype(np.float32), cols * 4)
        elif t == "f16":
            w.add_tensor_info(name, [rows, cols], np.dtype(np.float16), rows * cols * 2)
        elif t == "bf16":
            w.add_tensor_info(name, [rows, cols * 2], np.dtype(np.uint8), rows * cols * 2, raw_dtype=Q.BF16)
        else:
            elems, nbytes, _ = BLOCKS[t]
            w.add_tensor_info(name, [rows, cols // elems * nbytes], np.dtype(np.uint8), rows * cols // elems * nbytes,
                              raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, rows, cols, t in tensors:
        w.write_tensor_data(data(rows, cols, t))
    w.close()
    print(f"make_random_gguf: wrote {args.out} ({args.shape}, {args.type}, {len(tensors)} tensors)")


if __name__ == "__main__":
    main()
