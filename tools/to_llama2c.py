#!/usr/bin/env python3
"""Writes a llama_infer model file (Llama 2 family, rope theta 10000, no rope scaling) as a llama2.c
"version 0" checkpoint (fp32) and, when it embeds a SentencePiece tokenizer, llama2.c's tokenizer.bin:
the same weights in the format of karpathy/llama2.c's run.c, for measuring the two side by side
(docs/benchmarks.md, CPU).

    python3 tools/to_llama2c.py models/storyteller.bin /tmp/storyteller-llama2c.bin /tmp/storyteller-tok.bin

llama2.c layout: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len), then
fp32 slabs: embeddings, attention norms, wq, wk, wv, wo, ffn norms, w1, w2, w3, final norm, two unused
RoPE tables of seq_len * head_dim / 2 floats, and the classifier when it is not tied (vocab_size < 0).
tokenizer.bin: int32 max_token_length, then per id: fp32 score, int32 length, the piece's bytes (with
U+2581 as a space, as llama2.c's own tokenizer export writes them).
"""
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_file import ModelFile  # noqa: E402


def varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def sentencepiece_pieces(blob):
    """(piece, score) of every entry of a SentencePiece ModelProto (field 1: repeated SentencePiece with
    piece = 1 (string) and score = 2 (float)); other fields are skipped."""
    pieces, i = [], 0
    while i < len(blob):
        key, i = varint(blob, i)
        field, wire = key >> 3, key & 7
        if wire == 2:
            n, i = varint(blob, i)
            body, i = blob[i:i + n], i + n
            if field == 1:
                piece, score, j = b"", 0.0, 0
                while j < len(body):
                    k, j = varint(body, j)
                    if k >> 3 == 1 and k & 7 == 2:
                        m, j = varint(body, j)
                        piece, j = body[j:j + m], j + m
                    elif k >> 3 == 2 and k & 7 == 5:
                        score, j = struct.unpack_from("<f", body, j)[0], j + 4
                    elif k & 7 == 0:
                        _, j = varint(body, j)
                    elif k & 7 == 5:
                        j += 4
                    elif k & 7 == 1:
                        j += 8
                    else:
                        m, j = varint(body, j)
                        j += m
                pieces.append((piece, score))
        elif wire == 0:
            _, i = varint(blob, i)
        elif wire == 5:
            i += 4
        elif wire == 1:
            i += 8
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return pieces


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    mf = ModelFile(sys.argv[1])
    c = mf.config
    if c["family"] != "llama2" or c["rope_theta"] != 10000.0 or c["rope_scaling"] or c["dim"] != c["n_heads"] * c["head_dim"]:
        sys.exit("to_llama2c.py: run.c knows only Llama 2 shapes (rope theta 10000, dim = heads * head_dim)")
    L = c["n_layers"]
    with open(sys.argv[2], "wb") as f:
        vocab = c["vocab_size"] if c["tied_embeddings"] else -c["vocab_size"]
        f.write(struct.pack("<7i", c["dim"], c["hidden_dim"], L, c["n_heads"], c["n_kv_heads"], vocab, c["max_seq_len"]))
        f.write(mf.float32("tok_embeddings").astype("<f4").tobytes())
        for name in ("attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"):
            for layer in range(L):
                f.write(mf.float32(f"layers.{layer}.{name}").astype("<f4").tobytes())
        f.write(mf.float32("norm").astype("<f4").tobytes())
        f.write(np.zeros(2 * c["max_seq_len"] * c["head_dim"] // 2, dtype="<f4").tobytes())
        if not c["tied_embeddings"]:
            f.write(mf.float32("output").astype("<f4").tobytes())
    if len(sys.argv) == 4:
        if mf.tokenizer_type != "sentencepiece":
            sys.exit("to_llama2c.py: the model embeds no SentencePiece tokenizer")
        pieces = sentencepiece_pieces(mf.tokenizer_blob())
        out = []
        for i, (piece, score) in enumerate(pieces):
            text = {1: b"\n<s>\n", 2: b"\n</s>\n"}.get(i, piece.replace("\u2581".encode(), b" "))
            out.append((text, score))
        with open(sys.argv[3], "wb") as f:
            f.write(struct.pack("<I", max(len(t) for t, _ in out)))
            for text, score in out:
                f.write(struct.pack("<fi", score, len(text)) + text)


if __name__ == "__main__":
    main()
