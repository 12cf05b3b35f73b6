#!/usr/bin/env python3
"""Independent numpy reference implementation of the llama2.c Llama model.

Reads a llama2.c "version 0" checkpoint, tokenizes prompts with sentencepiece,
and greedy-decodes a fixed number of tokens in float64. Intended to produce
golden fixtures for the C++ engine's tests.

Example (run from the repository root):

    python3 tools/reference_llama2c.py \
        --checkpoint ../shared/models/stories260K/stories260K.bin \
        --tokenizer ../shared/models/stories260K/tok512.model \
        --n 80 --prompt "Once upon a time" --out test/fixtures/out.json

Requires: numpy, sentencepiece (pip install sentencepiece numpy).
"""

import argparse
import json
import os
import struct
import sys
from dataclasses import dataclass

import numpy as np

RMS_EPS = 1e-5
ROPE_THETA = 10000.0
BOS_ID = 1


# --------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------

@dataclass
class Config:
    dim: int          # model (residual stream) width
    hidden_dim: int   # FFN inner width
    n_layers: int
    n_heads: int      # query heads
    n_kv_heads: int   # key/value heads (GQA when < n_heads)
    vocab_size: int   # always positive here; tying is recorded separately
    seq_len: int      # maximum context length
    shared_classifier: bool  # True: wcls is the token embedding

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.dim * self.n_kv_heads // self.n_heads


@dataclass
class Weights:
    # All arrays are float32 as stored in the file; [out, in] layout means
    # y = W @ x.  L = n_layers, D = dim, H = hidden_dim, KV = kv_dim, V = vocab.
    token_embedding: np.ndarray  # float32 [V, D]
    rms_att: np.ndarray          # float32 [L, D]
    wq: np.ndarray               # float32 [L, D, D]
    wk: np.ndarray               # float32 [L, KV, D]
    wv: np.ndarray               # float32 [L, KV, D]
    wo: np.ndarray               # float32 [L, D, D]
    rms_ffn: np.ndarray          # float32 [L, D]
    w1: np.ndarray               # float32 [L, H, D]  (gate projection)
    w2: np.ndarray               # float32 [L, D, H]  (down projection)
    w3: np.ndarray               # float32 [L, H, D]  (up projection)
    rms_final: np.ndarray        # float32 [D]
    wcls: np.ndarray             # float32 [V, D]  (== token_embedding if tied)

    def astype(self, dtype) -> "Weights":
        """Return a copy of all weight arrays converted to `dtype`."""
        return Weights(**{k: v.astype(dtype) for k, v in self.__dict__.items()})


def load_checkpoint(path: str):
    """Read a llama2.c version-0 checkpoint: 7 x int32 header then fp32 data."""
    with open(path, "rb") as f:
        header = f.read(7 * 4)
        data = np.frombuffer(f.read(), dtype="<f4")

    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack(
        "<7i", header)
    # Sign of vocab_size encodes classifier tying: negative => separate wcls.
    shared = vocab > 0
    cfg = Config(dim, hidden, n_layers, n_heads, n_kv_heads, abs(vocab),
                 seq_len, shared)

    L, D, H, KV, V = n_layers, dim, hidden, cfg.kv_dim, cfg.vocab_size
    offset = 0

    def take(*shape):
        nonlocal offset
        n = int(np.prod(shape))
        if offset + n > data.size:
            raise ValueError(f"checkpoint {path} is truncated")
        arr = data[offset:offset + n].reshape(shape)
        offset += n
        return arr

    token_embedding = take(V, D)
    rms_att = take(L, D)
    wq = take(L, D, D)
    wk = take(L, KV, D)
    wv = take(L, KV, D)
    wo = take(L, D, D)
    rms_ffn = take(L, D)
    w1 = take(L, H, D)
    w2 = take(L, D, H)
    w3 = take(L, H, D)
    rms_final = take(D)
    # Legacy precomputed RoPE tables (real and imaginary halves); unused:
    # RoPE is recomputed from the formula below.
    take(seq_len * cfg.head_size // 2)
    take(seq_len * cfg.head_size // 2)
    wcls = token_embedding if shared else take(V, D)
    if offset != data.size:
        raise ValueError(
            f"checkpoint {path}: {data.size - offset} unexpected trailing floats")

    w = Weights(token_embedding, rms_att, wq, wk, wv, wo, rms_ffn,
                w1, w2, w3, rms_final, wcls)
    return cfg, w


# --------------------------------------------------------------------------
# Model maths
# --------------------------------------------------------------------------

def rmsnorm(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """y = x / sqrt(mean(x^2) + eps) * weight."""
    return x / np.sqrt(np.mean(x * x) + RMS_EPS) * weight


def silu(x: np.ndarray) -> np.ndarray:
    """silu(x) = x * sigmoid(x) = x / (1 + exp(-x))."""
    return x / (1.0 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax along the last axis."""
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def rope(v: np.ndarray, pos: int, head_size: int, dtype) -> np.ndarray:
    """Interleaved (llama2.c / Meta) rotary embedding of a [n_heads, head_size] array.

    Within each head, pair (v[2i], v[2i+1]) is rotated by angle
    pos * theta^(-2i / head_size):
        v'[2i]   = v[2i] * cos - v[2i+1] * sin
        v'[2i+1] = v[2i] * sin + v[2i+1] * cos
    """
    i = np.arange(head_size // 2, dtype=np.float64)
    angle = pos * ROPE_THETA ** (-2.0 * i / head_size)   # [head_size/2]
    cos = np.cos(angle).astype(dtype)
    sin = np.sin(angle).astype(dtype)
    even, odd = v[:, 0::2], v[:, 1::2]                   # [n_heads, head_size/2]
    out = np.empty_like(v)
    out[:, 0::2] = even * cos - odd * sin
    out[:, 1::2] = even * sin + odd * cos
    return out


class Transformer:
    """Single-sequence decoder with a KV cache, computing in `dtype`."""

    def __init__(self, cfg: Config, weights: Weights, dtype=np.float64):
        self.cfg = cfg
        self.dtype = dtype
        self.w = weights.astype(dtype)
        L, S, KV = cfg.n_layers, cfg.seq_len, cfg.kv_dim
        self.key_cache = np.zeros((L, S, KV), dtype=dtype)    # [L, seq_len, kv_dim]
        self.value_cache = np.zeros((L, S, KV), dtype=dtype)  # [L, seq_len, kv_dim]

    def forward(self, token: int, pos: int) -> np.ndarray:
        """Process one token at position `pos`; return logits [vocab] (dtype)."""
        cfg, w, dt = self.cfg, self.w, self.dtype
        if not 0 <= pos < cfg.seq_len:
            raise ValueError(f"position {pos} outside context of {cfg.seq_len}")
        hs = cfg.head_size
        n_heads, n_kv = cfg.n_heads, cfg.n_kv_heads
        group = n_heads // n_kv            # query heads per kv head
        scale = dt(1.0 / np.sqrt(hs))

        x = w.token_embedding[token].copy()          # [D]
        for l in range(cfg.n_layers):
            # ---- attention block: x += wo @ attn(rmsnorm(x)) ----
            xb = rmsnorm(x, w.rms_att[l])
            q = (w.wq[l] @ xb).reshape(n_heads, hs)  # [n_heads, hs]
            k = (w.wk[l] @ xb).reshape(n_kv, hs)     # [n_kv, hs]
            v = w.wv[l] @ xb                         # [KV]
            q = rope(q, pos, hs, dt)
            k = rope(k, pos, hs, dt)
            self.key_cache[l, pos] = k.reshape(-1)
            self.value_cache[l, pos] = v

            keys = self.key_cache[l, :pos + 1].reshape(pos + 1, n_kv, hs)
            vals = self.value_cache[l, :pos + 1].reshape(pos + 1, n_kv, hs)
            att_out = np.empty((n_heads, hs), dtype=dt)
            for h in range(n_heads):
                kvh = h // group
                # scores[t] = q_h . k_t / sqrt(hs), t = 0..pos (causal)
                scores = (keys[:, kvh, :] @ q[h]) * scale   # [pos+1]
                probs = softmax(scores)
                att_out[h] = probs @ vals[:, kvh, :]         # [hs]
            x = x + w.wo[l] @ att_out.reshape(-1)

            # ---- FFN block: x += w2 @ (silu(w1 @ h) * (w3 @ h)), h = rmsnorm(x) ----
            xb = rmsnorm(x, w.rms_ffn[l])
            hb = silu(w.w1[l] @ xb) * (w.w3[l] @ xb)      # [H]
            x = x + w.w2[l] @ hb

        x = rmsnorm(x, w.rms_final)
        return w.wcls @ x                                 # [V]


# --------------------------------------------------------------------------
# Greedy decoding
# --------------------------------------------------------------------------

def greedy_decode(model: Transformer, prompt_ids, n_new: int, tie_tol: float = 1e-4):
    """Feed the prompt, then take argmax (lowest index on ties) n_new times.

    Never stops early on EOS/BOS. Returns (generated_ids, logits_per_step,
    near_ties, min_gap) where near_ties lists (step, top1, top2, gap) whenever
    the top two logits differ by less than tie_tol, and min_gap is the smallest
    top-2 gap seen over all steps.
    """
    if len(prompt_ids) + n_new - 1 > model.cfg.seq_len:
        raise ValueError("prompt + generation exceeds seq_len")
    logits = None
    pos = 0
    for tok in prompt_ids:
        logits = model.forward(tok, pos)
        pos += 1

    generated, step_logits, near_ties = [], [], []
    min_gap = float("inf")
    for step in range(n_new):
        step_logits.append(logits.astype(np.float64))
        nxt = int(np.argmax(logits))  # np.argmax returns the first max index
        order = np.argsort(-logits.astype(np.float64), kind="stable")
        gap = float(logits[order[0]] - logits[order[1]])
        min_gap = min(min_gap, gap)
        if gap < tie_tol:
            near_ties.append((step, int(order[0]), int(order[1]), gap))
        generated.append(nxt)
        if step + 1 < n_new:  # the last token need not be fed back
            logits = model.forward(nxt, pos)
            pos += 1
    return generated, step_logits, near_ties, min_gap


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="llama2.c .bin checkpoint")
    ap.add_argument("--tokenizer", required=True, help="sentencepiece .model file")
    ap.add_argument("--n", type=int, default=80, help="number of new tokens")
    ap.add_argument("--prompt", action="append", required=True,
                    help="prompt text (repeatable)")
    ap.add_argument("--out", help="write JSON fixture to this path")
    ap.add_argument("--print-text", action="store_true",
                    help="print the generated text of each case")
    ap.add_argument("--no-fp32-check", action="store_true",
                    help="skip the float32-vs-float64 sanity check")
    args = ap.parse_args(argv)

    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)

    cfg, weights = load_checkpoint(args.checkpoint)
    print(f"config: {cfg}", file=sys.stderr)

    cases = []
    any_tie = False
    for idx, prompt in enumerate(args.prompt):
        prompt_ids = [BOS_ID] + list(sp.encode(prompt))
        model = Transformer(cfg, weights, np.float64)
        gen, logits64, ties, min_gap = greedy_decode(model, prompt_ids, args.n)
        text = sp.decode(gen)
        cases.append({"prompt": prompt, "prompt_ids": prompt_ids,
                      "generated_ids": gen, "text": text})
        print(f"case {idx}: {len(prompt_ids)} prompt ids, smallest top-2 logit "
              f"gap = {min_gap:.3e}", file=sys.stderr)
        for step, a, b, gap in ties:
            any_tie = True
            print(f"WARNING: near-tie in case {idx} ({prompt!r}) step {step}: "
                  f"top ids {a} vs {b}, gap {gap:.3e}", file=sys.stderr)
        if args.print_text:
            print(f"[{idx}] {prompt!r} -> {text!r}")

        if idx == 0 and not args.no_fp32_check:
            # Teacher-force the float64 token sequence through a float32 model
            # and compare logits step by step.
            m32 = Transformer(cfg, weights, np.float32)
            seq = prompt_ids + gen
            max_diff = 0.0
            flips = 0
            for pos, tok in enumerate(seq[:-1]):
                l32 = m32.forward(tok, pos)
                if pos >= len(prompt_ids) - 1:
                    step = pos - (len(prompt_ids) - 1)
                    l64 = logits64[step]
                    max_diff = max(max_diff, float(np.max(np.abs(l64 - l32))))
                    flips += int(np.argmax(l32)) != gen[step]
            print(f"fp32 vs fp64 (case 0): max |logit diff| = {max_diff:.3e}, "
                  f"argmax disagreements = {flips}/{len(gen)}", file=sys.stderr)

    if not any_tie:
        print("no near-tie warnings (top-2 gap >= 1e-4 at every step)", file=sys.stderr)

    if args.out:
        result = {"checkpoint": os.path.basename(args.checkpoint),
                  "tokenizer": os.path.basename(args.tokenizer),
                  "n": args.n, "cases": cases}
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2, ensure_ascii=False)
            f.write("\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
