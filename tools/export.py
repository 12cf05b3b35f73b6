#!/usr/bin/env python3
"""Convert a Llama checkpoint to the llama_infer model file (docs/model_format.md, version 1).

Sources (exactly one):
  --hf DIR          a Hugging Face LlamaForCausalLM folder: config.json, model.safetensors or sharded
                    model-0000N-of-0000M.safetensors (+ model.safetensors.index.json), and a tokenizer
                    (tokenizer.model, original/tokenizer.model, or a byte-level BPE tokenizer.json).
  --llama2c FILE    a llama2.c "version 0" checkpoint; it has no tokenizer, so --tokenizer is required.

Examples, from the repository root:
  python3 tools/export.py --hf ~/models/Llama-3.2-1B --dtype bf16 llama32_1b.bin
  python3 tools/export.py --llama2c ../shared/models/stories260K/stories260K.bin \\
      --tokenizer ../shared/models/stories260K/tok512.model --dtype fp32 stories260K_fp32.bin

Exit status: 0 written; 2 refused (a model or option this format or engine does not support);
1 any other error. Either way the message is one line on stderr and no partial output is left.

Memory: every offset is computed from metadata before any data is read, then tensors are streamed
in chunks of at most CHUNK_BYTES of float32 (plus that chunk's conversions), so RAM use is bounded
by the chunk size, not the model size. Needs numpy only: safetensors is parsed directly, no torch.
"""

import argparse
import base64
import json
import os
import re
import struct
import sys
from dataclasses import dataclass

import numpy as np

MAGIC = b"LLMI"
FORMAT_VERSION = 1
DATA_ALIGN = 4096    # data_start is page aligned
TENSOR_ALIGN = 256   # every tensor (and the tokenizer blob) starts on this boundary
CHUNK_BYTES = 64 << 20
LLAMA3_N_SPECIAL = 256  # <|begin_of_text|> ... follow the tiktoken ranks (docs/model_format.md)
DEFAULT_GROUP_SIZE = 64
WEIGHT_DTYPES = ("fp32", "fp16", "bf16", "int8")


class Refusal(Exception):
    """The input is valid but not something this format or engine supports: exit 2."""


class ExportError(Exception):
    """The input is broken or unreadable: exit 1."""


def align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


# --------------------------------------------------------------------------------------------
# Input tensors: a lazily read, row-sliceable view of bytes in a checkpoint file
# --------------------------------------------------------------------------------------------

_maps: dict = {}


def _file_map(path: str) -> np.memmap:
    if path not in _maps:
        _maps[path] = np.memmap(path, dtype=np.uint8, mode="r")
    return _maps[path]


def bf16_bits_to_f32(u16: np.ndarray) -> np.ndarray:
    # bf16 is the top half of an IEEE float32: shifting the bits up 16 is exact.
    return (u16.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, round to nearest even (what torch's .to(bfloat16) does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16
    return rounded.astype(np.uint16)


_SOURCE_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}


@dataclass
class Source:
    """A tensor stored in an input file: `dtype` ("F32", "F16" or "BF16") and `shape`, row major,
    starting at byte `offset` of `path`."""
    path: str
    offset: int
    dtype: str
    shape: tuple

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * _SOURCE_ITEMSIZE[self.dtype]

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """float32 [r1 - r0, cols] (a 1-D tensor reads as [n]) for rows r0..r1."""
        cols = int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1
        size = _SOURCE_ITEMSIZE[self.dtype]
        start = self.offset + r0 * cols * size
        raw = _file_map(self.path)[start:start + (r1 - r0) * cols * size]
        if self.dtype == "F32":
            out = raw.view("<f4").astype(np.float32)
        elif self.dtype == "F16":
            out = raw.view("<f2").astype(np.float32)
        else:
            out = bf16_bits_to_f32(raw.view("<u2"))
        return out.reshape((r1 - r0, cols) if len(self.shape) > 1 else (r1 - r0,))


def read_safetensors_header(path: str) -> dict:
    """name -> Source for every tensor of one .safetensors file: 8 bytes little-endian header
    length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}}, then the data;
    offsets are relative to the end of the header."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ExportError(f"{path}: too short to be a safetensors file")
        n = struct.unpack("<Q", head)[0]
        if n > min(size - 8, 1 << 28):
            raise ExportError(f"{path}: safetensors header length {n} is impossible (corrupt file?)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ExportError(f"{path}: safetensors header is not JSON ({e})") from None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        src = Source(path, 8 + n + begin, info["dtype"], tuple(info["shape"]))
        if src.dtype in _SOURCE_ITEMSIZE:
            if end - begin != src.nbytes or 8 + n + end > size:
                raise ExportError(f"{path}: tensor {name} has inconsistent offsets (truncated file?)")
        out[name] = src
    return out


# --------------------------------------------------------------------------------------------
# Output plan: every tensor's name, dtype, shape and offset, fixed before any data is read
# --------------------------------------------------------------------------------------------

@dataclass
class OutTensor:
    name: str
    dtype: str               # fp32 | fp16 | bf16 | int8
    shape: tuple
    source: Source
    unpermute_heads: int = 0  # > 0: wq/wk from Hugging Face, undo rotate-half over this many heads
    head_dim: int = 0
    group_size: int = 0      # int8: input values per scale
    offset: int = 0          # relative to data_start
    scales_offset: int = 0   # int8: offset of the fp32 [out, in / group_size] scales

    @property
    def nbytes(self) -> int:
        n = int(np.prod(self.shape, dtype=np.int64))
        return n * {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}[self.dtype]

    @property
    def scales_shape(self) -> tuple:
        return (self.shape[0], self.shape[1] // self.group_size)

    @property
    def scales_nbytes(self) -> int:
        return self.scales_shape[0] * self.scales_shape[1] * 4


def plan_tensors(cfg: dict, sources: dict, hf_layout: bool, weight_dtype: str, group_size: int) -> list:
    """The output tensors in file order, per the table in docs/model_format.md.
    `sources` maps our tensor names to Sources; shapes are checked against the config."""
    D, F, L = cfg["dim"], cfg["hidden_dim"], cfg["n_layers"]
    V, hd = cfg["vocab_size"], cfg["head_dim"]
    Q, KV = cfg["n_heads"] * hd, cfg["n_kv_heads"] * hd
    linear_dtype = weight_dtype
    plan = []

    def add(name, shape, dtype, heads=0):
        src = sources.get(name)
        if src is None:
            raise ExportError(f"the checkpoint has no tensor for {name}")
        if src.dtype not in _SOURCE_ITEMSIZE:
            raise Refusal(f"tensor for {name} has dtype {src.dtype}; only F32, F16 and BF16 are supported")
        if tuple(src.shape) != tuple(shape):
            raise ExportError(f"tensor for {name} has shape {list(src.shape)}, the config implies {list(shape)}")
        g = group_size if dtype == "int8" else 0
        plan.append(OutTensor(name, dtype, tuple(shape), src, heads if hf_layout else 0, hd, g))

    # Under int8 the spec keeps tok_embeddings in fp16: it is a gather of one row per token, not a
    # matmul, so int8 would gain it no speed. The classifier (`output`) is a matmul: quantized.
    add("tok_embeddings", (V, D), "fp16" if weight_dtype == "int8" else weight_dtype)
    for i in range(L):
        p = f"layers.{i}."
        add(p + "attention_norm", (D,), "fp32")
        add(p + "wq", (Q, D), linear_dtype, cfg["n_heads"])
        add(p + "wk", (KV, D), linear_dtype, cfg["n_kv_heads"])
        add(p + "wv", (KV, D), linear_dtype)
        add(p + "wo", (D, Q), linear_dtype)
        add(p + "ffn_norm", (D,), "fp32")
        add(p + "w1", (F, D), linear_dtype)
        add(p + "w2", (D, F), linear_dtype)
        add(p + "w3", (F, D), linear_dtype)
    add("norm", (D,), "fp32")
    if not cfg["tied_embeddings"]:
        add("output", (V, D), linear_dtype)
    return plan


def lay_out(plan: list) -> int:
    """Assigns offsets (relative to data_start); returns where the tokenizer blob goes."""
    at = 0
    for t in plan:
        t.offset = at
        at = align_up(at + t.nbytes, TENSOR_ALIGN)
        if t.dtype == "int8":
            t.scales_offset = at
            at = align_up(at + t.scales_nbytes, TENSOR_ALIGN)
    return at


def header_json(cfg: dict, plan: list, tok_type: str, tok_offset: int, tok_nbytes: int) -> bytes:
    entries = []
    for t in plan:
        entries.append({"name": t.name, "dtype": t.dtype, "shape": list(t.shape),
                        "offset": t.offset, "nbytes": t.nbytes})
        if t.dtype == "int8":
            entries.append({"name": t.name + ".scales", "dtype": "fp32", "shape": list(t.scales_shape),
                            "offset": t.scales_offset, "nbytes": t.scales_nbytes})
    header = {"config": cfg, "tensors": entries,
              "tokenizer": {"type": tok_type, "offset": tok_offset, "nbytes": tok_nbytes}}
    return json.dumps(header, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------------------------
# Conversion of one chunk of rows
# --------------------------------------------------------------------------------------------

def unpermute_rotary(w: np.ndarray, n_heads: int, head_dim: int) -> np.ndarray:
    """Hugging Face wq/wk rows -> Meta's interleaved rows, for [n_heads * head_dim, cols].

    Both conventions rotate pairs of coordinates of a head (size d) by pos * inv_freq[j]:
      Meta (interleaved), and our kernels: the pair is (2j, 2j + 1)
          out[2j] = x[2j] cos - x[2j+1] sin,        out[2j+1] = x[2j+1] cos + x[2j] sin
      Hugging Face (rotate_half): the pair is (j, j + d/2)
          out[j]  = x[j] cos - x[j + d/2] sin,      out[j + d/2] = x[j + d/2] cos + x[j] sin
    They compute the same thing exactly when HF coordinate j is Meta's 2j (the "real" part) and
    HF coordinate j + d/2 is Meta's 2j + 1 (the "imaginary" part): hf row p*d/2 + j = meta row
    2j + p, p in {0, 1}. HF's conversion script built its weights from Meta's that way. So view
    HF's rows of a head as [p, j], swap to [j, p] and flatten: row 2j + p <- hf row p*d/2 + j.
    q and k get the same permutation within each head, so every q.k (the attention scores) is
    unchanged; test/test_export.py checks that numerically against both RoPE conventions.
    """
    cols = w.shape[1]
    return (w.reshape(n_heads, 2, head_dim // 2, cols)
             .transpose(0, 2, 1, 3)
             .reshape(n_heads * head_dim, cols))


def quantize_int8(w: np.ndarray, group_size: int):
    """Symmetric int8 per group of `group_size` consecutive input values of a row:
    scale = max|w| / 127, q = round(w / scale) in [-127, 127]; an all-zero group gets scale 0, q 0.
    Returns (q int8 [R, C], scales fp32 [R, C / G], dequantised float32 [R, C])."""
    R, C = w.shape
    g = w.reshape(R, C // group_size, group_size)
    scales = (np.abs(g).max(axis=2) / np.float32(127)).astype(np.float32)
    q = np.zeros(g.shape, dtype=np.float32)
    np.divide(g, scales[:, :, None], out=q, where=scales[:, :, None] > 0)
    q = np.clip(np.rint(q), -127, 127).astype(np.int8)
    deq = (q.astype(np.float32) * scales[:, :, None]).reshape(R, C)
    return q.reshape(R, C), scales, deq


class QuantStats:
    """Per tensor relative error ||W - dequant(W)|| / ||W||, accumulated over chunks in float64."""

    def __init__(self):
        self.errors = []  # (name, relative error)
        self._err2 = self._ref2 = 0.0

    def add_chunk(self, w: np.ndarray, deq: np.ndarray):
        d = w.astype(np.float64) - deq
        self._err2 += float(np.dot(d.ravel(), d.ravel()))
        w64 = w.astype(np.float64).ravel()
        self._ref2 += float(np.dot(w64, w64))

    def end_tensor(self, name: str):
        self.errors.append((name, (self._err2 / self._ref2) ** 0.5 if self._ref2 > 0 else 0.0))
        self._err2 = self._ref2 = 0.0


def write_tensor(f, data_start: int, t: OutTensor, stats: QuantStats):
    """Streams one tensor from its source into the output, CHUNK_BYTES of float32 at a time."""
    rows = t.shape[0]
    cols = t.shape[1] if len(t.shape) > 1 else 1
    step = max(1, CHUNK_BYTES // (4 * cols))
    if t.unpermute_heads:
        step = max(t.head_dim, step // t.head_dim * t.head_dim)  # whole heads per chunk
    q_at = data_start + t.offset
    s_at = data_start + t.scales_offset
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        w = t.source.rows(r0, r1)
        if not np.isfinite(w).all():
            raise ExportError(f"{t.name}: the checkpoint holds NaN or Inf values")
        if t.unpermute_heads:
            w = unpermute_rotary(w, (r1 - r0) // t.head_dim, t.head_dim)
        if t.dtype == "fp32":
            out = w.astype("<f4")
        elif t.dtype == "fp16":
            with np.errstate(over="ignore"):  # reported below, as one line
                out = w.astype("<f2")
            if not np.isfinite(out).all():
                raise Refusal(f"{t.name}: values up to {np.abs(w).max():.4g} overflow fp16; "
                              "export with --dtype bf16 or fp32")
        elif t.dtype == "bf16":
            out = f32_to_bf16_bits(w)
        else:
            out, scales, deq = quantize_int8(w, t.group_size)
            stats.add_chunk(w, deq)
            f.seek(s_at)
            f.write(np.ascontiguousarray(scales, dtype="<f4").tobytes())
            s_at += scales.nbytes
        f.seek(q_at)
        f.write(np.ascontiguousarray(out).tobytes())
        q_at += out.nbytes
    if t.dtype == "int8":
        stats.end_tensor(t.name)


# --------------------------------------------------------------------------------------------
# Tokenizers: the blob is the tokenizer file itself (tokenizer.json is converted to tiktoken)
# --------------------------------------------------------------------------------------------

@dataclass
class Tokenizer:
    type: str       # "sentencepiece" | "tiktoken"
    blob: bytes
    n_tokens: int   # ids it can produce; for tiktoken the 256 Llama 3 special tokens included
    origin: str


_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]*={0,2} [0-9]+$")


def _tiktoken_count(blob: bytes):
    """Number of ranks if `blob` is a tiktoken file (lines `base64 rank`, ranks 0..n-1 in order)."""
    lines = blob.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines or not _TIKTOKEN_LINE.match(lines[0]):
        return None
    for i, line in enumerate(lines):
        m = _TIKTOKEN_LINE.match(line)
        if not m or int(line.rsplit(b" ", 1)[1]) != i:
            raise Refusal(f"tiktoken file line {i + 1} is not `base64 {i}`; ranks must be 0..n-1 in order")
    return len(lines)


def _sentencepiece_count(blob: bytes):
    """Number of pieces if `blob` parses as a SentencePiece ModelProto (repeated field 1 =
    pieces); None if it is not a protobuf of that shape."""
    i, n, pieces = 0, len(blob), 0

    def varint(i):
        v = shift = 0
        while True:
            if i >= n or shift > 63:
                raise ValueError
            b = blob[i]
            i += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return v, i
    try:
        while i < n:
            key, i = varint(i)
            field, wire = key >> 3, key & 7
            if field == 0:
                return None
            if wire == 0:
                _, i = varint(i)
            elif wire == 1:
                i += 8
            elif wire == 2:
                length, i = varint(i)
                i += length
            elif wire == 5:
                i += 4
            else:
                return None
            if i > n:
                return None
            pieces += field == 1
    except ValueError:
        return None
    return pieces if pieces > 0 else None


def _byte_level_decoder() -> dict:
    """GPT-2 byte-level BPE alphabet: printable Latin-1 bytes stand for themselves, the other 68
    bytes are shifted to code points 256, 257, ... in byte order. Returns char -> byte."""
    kept = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    table, shifted = {}, 0
    for b in range(256):
        if b in kept:
            table[chr(b)] = b
        else:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def tokenizer_json_to_tiktoken(path: str) -> bytes:
    """A byte-level BPE tokenizer.json (Llama 3) -> tiktoken lines `base64(token bytes) rank` in id
    order. The added (special) tokens are left out: the format defines them after the ranks."""
    with open(path, encoding="utf-8") as f:
        tj = json.load(f)
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise Refusal(f"{path}: tokenizer model type {model.get('type')!r} is not BPE")
    parts = [tj.get("pre_tokenizer") or {}, tj.get("decoder") or {}]
    if "ByteLevel" not in json.dumps(parts):
        raise Refusal(f"{path}: not a byte-level BPE tokenizer (a Llama 2 style tokenizer.json "
                      "needs its tokenizer.model: pass it with --tokenizer)")
    special = {t["id"] for t in tj.get("added_tokens", []) if t.get("special")}
    regular = sorted((i, s) for s, i in model["vocab"].items() if i not in special)
    if [i for i, _ in regular] != list(range(len(regular))):
        raise Refusal(f"{path}: the BPE vocabulary ids are not 0..{len(regular) - 1}")
    to_byte = _byte_level_decoder()
    lines = []
    for i, s in regular:
        try:
            raw = bytes(to_byte[c] for c in s)
        except KeyError:
            raise Refusal(f"{path}: token {i} {s!r} has a character outside the byte-level alphabet") from None
        lines.append(base64.b64encode(raw) + b" " + str(i).encode())
    return b"\n".join(lines) + b"\n"


def load_tokenizer(path: str) -> Tokenizer:
    if path.endswith(".json"):
        blob = tokenizer_json_to_tiktoken(path)
        return Tokenizer("tiktoken", blob, _tiktoken_count(blob) + LLAMA3_N_SPECIAL, path + " (converted)")
    with open(path, "rb") as f:
        blob = f.read()
    n = _tiktoken_count(blob)
    if n is not None:
        return Tokenizer("tiktoken", blob, n + LLAMA3_N_SPECIAL, path)
    n = _sentencepiece_count(blob)
    if n is not None:
        return Tokenizer("sentencepiece", blob, n, path)
    raise Refusal(f"{path}: not a SentencePiece .model, a tiktoken file or a tokenizer.json "
                  "(llama2.c's tokenizer.bin is not accepted; pass the .model it was made from)")


def find_hf_tokenizer(folder: str) -> str:
    for rel in ("tokenizer.model", os.path.join("original", "tokenizer.model"), "tokenizer.json"):
        if os.path.isfile(os.path.join(folder, rel)):
            return os.path.join(folder, rel)
    raise Refusal(f"{folder}: no tokenizer.model or tokenizer.json; pass one with --tokenizer")


# --------------------------------------------------------------------------------------------
# Hugging Face folders
# --------------------------------------------------------------------------------------------

def _int(cfg: dict, key: str, default=None) -> int:
    v = cfg.get(key, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise Refusal(f"config.json: {key} = {v!r} is not a positive integer")
    return v


def _rope_from_hf(cfg: dict):
    """(rope_theta, rope_scaling or None). Transformers 4 writes rope_theta and rope_scaling;
    transformers 5 writes rope_parameters {rope_type, rope_theta, factor, ...}."""
    params = cfg.get("rope_parameters") or {}
    if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
        raise Refusal("config.json: per-layer rope_parameters are not supported")
    theta = float(params.get("rope_theta", cfg.get("rope_theta") or 10000.0))
    partial = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise Refusal(f"config.json: partial_rotary_factor {partial} is not supported (RoPE on whole heads only)")
    scaling = cfg.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise Refusal(f"config.json: rope scaling type {kind!r} is not supported (only 'llama3'); "
                      "models with linear/dynamic/yarn scaling cannot be exported")
    try:
        out = {"type": "llama3", "factor": float(scaling["factor"]),
               "low_freq_factor": float(scaling["low_freq_factor"]),
               "high_freq_factor": float(scaling["high_freq_factor"]),
               "original_max_position_embeddings": int(scaling["original_max_position_embeddings"])}
    except (KeyError, TypeError, ValueError) as e:
        raise Refusal(f"config.json: llama3 rope scaling is missing or has a bad {e}") from None
    if not (out["factor"] >= 1 and 0 < out["low_freq_factor"] < out["high_freq_factor"]
            and out["original_max_position_embeddings"] > 0):
        raise Refusal(f"config.json: invalid llama3 rope scaling {out}")
    return theta, out


def _ids(v) -> list:
    if v is None:
        return []
    return [v] if isinstance(v, int) else list(v)


def config_from_hf(cfg: dict, gen_cfg: dict) -> dict:
    """config.json (+ generation_config.json) -> our config, minus family, weight_dtype, group_size.
    Refuses anything our engine would compute differently from transformers' LlamaForCausalLM."""
    archs = cfg.get("architectures") or ["LlamaForCausalLM"]
    if cfg.get("model_type") != "llama" or "LlamaForCausalLM" not in archs:
        raise Refusal(f"config.json: model_type {cfg.get('model_type')!r} / architectures {archs} "
                      "is not a LlamaForCausalLM")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise Refusal(f"config.json: {key} is true; biases are not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise Refusal(f"config.json: hidden_act {cfg.get('hidden_act')!r} is not supported (only silu)")
    if cfg.get("quantization_config"):
        raise Refusal("config.json: pre-quantized checkpoints (quantization_config) are not supported")
    dim = _int(cfg, "hidden_size")
    n_heads = _int(cfg, "num_attention_heads")
    n_kv = _int(cfg, "num_key_value_heads", n_heads)
    if cfg.get("head_dim") is None and dim % n_heads:
        raise Refusal(f"config.json: hidden_size {dim} is not a multiple of num_attention_heads {n_heads}")
    head_dim = _int(cfg, "head_dim", dim // n_heads)
    if n_heads % n_kv or head_dim % 2:
        raise Refusal(f"config.json: need num_key_value_heads ({n_kv}) to divide num_attention_heads "
                      f"({n_heads}) and an even head_dim ({head_dim})")
    theta, scaling = _rope_from_hf(cfg)
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    # Transformers' defaults when a key is absent: bos 1, eos 2. generation_config.json's eos
    # list is the one generate() stops on (Llama 3 Instruct adds <|eot_id|> there), so take both.
    bos = cfg.get("bos_token_id", 1)
    eos = []
    for e in _ids(cfg.get("eos_token_id", 2)) + _ids(gen_cfg.get("eos_token_id")):
        if e not in eos:
            eos.append(e)
    vocab = _int(cfg, "vocab_size")
    if not isinstance(bos, int) or not eos or not all(isinstance(e, int) and 0 <= e < vocab for e in eos) \
            or not 0 <= bos < vocab:
        raise Refusal(f"config.json: bos_token_id {bos!r} / eos_token_id {eos!r} missing or outside the vocabulary")
    return {
        "dim": dim, "hidden_dim": _int(cfg, "intermediate_size"), "n_layers": _int(cfg, "num_hidden_layers"),
        "n_heads": n_heads, "n_kv_heads": n_kv, "head_dim": head_dim,
        "vocab_size": vocab, "max_seq_len": _int(cfg, "max_position_embeddings"),
        "norm_eps": eps, "rope_theta": theta, "rope_scaling": scaling,
        "tied_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "bos_id": bos, "eos_ids": eos,
    }


def _hf_name_map(n_layers: int) -> dict:
    """our name -> Hugging Face tensor name."""
    m = {"tok_embeddings": "model.embed_tokens.weight", "norm": "model.norm.weight", "output": "lm_head.weight"}
    parts = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
             "wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
             "wo": "self_attn.o_proj", "w1": "mlp.gate_proj", "w2": "mlp.down_proj", "w3": "mlp.up_proj"}
    for i in range(n_layers):
        for ours, theirs in parts.items():
            m[f"layers.{i}.{ours}"] = f"model.layers.{i}.{theirs}.weight"
    return m


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:
        raise ExportError(f"{path}: not valid JSON ({e})") from None


def load_hf(folder: str):
    """(config, sources by our name) for a Hugging Face folder."""
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path):
        raise ExportError(f"{folder}: no config.json (is this a Hugging Face model folder?)")
    gen_path = os.path.join(folder, "generation_config.json")
    gen_cfg = _read_json(gen_path) if os.path.isfile(gen_path) else {}
    cfg = config_from_hf(_read_json(cfg_path), gen_cfg)

    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        files = sorted(set(_read_json(index)["weight_map"].values()))
    elif os.path.isfile(os.path.join(folder, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        files = sorted(n for n in os.listdir(folder) if re.fullmatch(r"model-\d+-of-\d+\.safetensors", n))
    if not files:
        other = [n for n in os.listdir(folder) if n.endswith((".bin", ".pt", ".pth"))]
        raise Refusal(f"{folder}: no .safetensors weights" + (f" (found {other[0]}; only safetensors is read)"
                                                              if other else ""))
    theirs = {}
    for name in files:
        for k, src in read_safetensors_header(os.path.join(folder, name)).items():
            if k in theirs:
                raise ExportError(f"{folder}: tensor {k} appears in two shards")
            theirs[k] = src

    name_map = _hf_name_map(cfg["n_layers"])
    sources = {ours: theirs[hf] for ours, hf in name_map.items() if hf in theirs}
    if cfg["tied_embeddings"]:
        sources.pop("output", None)  # some tied checkpoints still carry a copy of lm_head
    used = set(name_map.values())
    extra = [k for k in theirs if k not in used and not k.endswith("rotary_emb.inv_freq")]
    if extra:
        raise Refusal(f"{folder}: unexpected tensors for a plain Llama, e.g. {extra[0]} ({len(extra)} in all)")
    return cfg, sources


# --------------------------------------------------------------------------------------------
# llama2.c checkpoints
# --------------------------------------------------------------------------------------------

def load_llama2c(path: str):
    """(config, sources) for a llama2.c version-0 checkpoint: 7 int32 (dim, hidden_dim,
    n_layers, n_heads, n_kv_heads, vocab_size (negative: untied classifier), seq_len), then
    fp32 slabs, each kind for all layers; its wq/wk are already in Meta's interleaved layout."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(28)
    if head[:4] == b"ak42":
        raise Refusal(f"{path}: llama2.c version-1/2 checkpoints (magic ak42) are not supported; "
                      "only legacy version 0")
    if len(head) < 28:
        raise ExportError(f"{path}: too short to be a llama2.c checkpoint")
    D, F, L, H, KVH, V, S = struct.unpack("<7i", head)
    tied, V = V > 0, abs(V)
    if min(D, F, L, H, KVH, V, S) <= 0 or D % H or H % KVH or (D // H) % 2:
        raise ExportError(f"{path}: header {[D, F, L, H, KVH, V, S]} is not a valid llama2.c version-0 header")
    hd = D // H
    kv = KVH * hd
    cfg = {"dim": D, "hidden_dim": F, "n_layers": L, "n_heads": H, "n_kv_heads": KVH, "head_dim": hd,
           "vocab_size": V, "max_seq_len": S, "norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
           "tied_embeddings": tied, "bos_id": 1,
           # llama2.c's run.c also stops at BOS, which its models emit between stories; the C++
           # reader's direct llama2.c path uses the same {2, 1}, so both paths stop alike.
           "eos_ids": [2, 1]}
    sources, at = {}, 28

    def take(name, shape):
        nonlocal at
        src = Source(path, at, "F32", shape)
        at += src.nbytes
        if name:
            sources[name] = src

    def slab(kind, shape):
        for i in range(L):
            take(f"layers.{i}.{kind}", shape)

    take("tok_embeddings", (V, D))
    slab("attention_norm", (D,))
    slab("wq", (D, D))
    slab("wk", (kv, D))
    slab("wv", (kv, D))
    slab("wo", (D, D))
    slab("ffn_norm", (D,))
    slab("w1", (F, D))
    slab("w2", (D, F))
    slab("w3", (F, D))
    take("norm", (D,))
    take(None, (S * hd,))  # freq_cis_real and freq_cis_imag, seq_len * head_size / 2 each: unused
    if not tied:
        take("output", (V, D))
    if at != size:
        raise ExportError(f"{path}: {size} bytes, but its header {[D, F, L, H, KVH, -V if not tied else V, S]} "
                          f"implies {at}; not a llama2.c version-0 checkpoint?")
    return cfg, sources


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def export(args) -> None:
    if args.dtype != "int8" and args.group_size is not None:
        raise Refusal("--group_size applies to --dtype int8 only")
    group_size = (args.group_size or DEFAULT_GROUP_SIZE) if args.dtype == "int8" else 0

    if args.llama2c:
        if not args.tokenizer:
            raise Refusal("a llama2.c checkpoint has no tokenizer: pass --tokenizer TOKENIZER.model")
        cfg, sources = load_llama2c(args.llama2c)
        hf_layout = False
    else:
        cfg, sources = load_hf(args.hf)
        hf_layout = True
    tok = load_tokenizer(args.tokenizer or find_hf_tokenizer(args.hf))

    if args.llama2c and tok.type != "sentencepiece":
        raise Refusal(f"{tok.origin}: llama2.c models use a SentencePiece tokenizer, this is {tok.type}")
    if tok.type == "sentencepiece" and cfg["vocab_size"] >= 128000:
        raise Refusal(f"vocab_size {cfg['vocab_size']} is Llama 3's, but the tokenizer is SentencePiece")
    if tok.n_tokens > cfg["vocab_size"]:
        raise Refusal(f"{tok.origin}: {tok.n_tokens} tokens do not fit the model's vocab_size {cfg['vocab_size']}")
    # Llama 3 is the byte-level BPE (tiktoken) family with 128k+ vocabularies; Llama 2, TinyLlama,
    # Code Llama and llama2.c models use SentencePiece.
    family = "llama3" if tok.type == "tiktoken" else "llama2"

    if args.dtype == "int8":
        q_dim = cfg["n_heads"] * cfg["head_dim"]
        if group_size <= 0 or any(n % group_size for n in (cfg["dim"], cfg["hidden_dim"], q_dim)):
            raise Refusal(f"--group_size {group_size} must divide dim {cfg['dim']}, hidden_dim "
                          f"{cfg['hidden_dim']} and n_heads*head_dim {q_dim}")

    config = {"family": family, **cfg, "weight_dtype": args.dtype, "group_size": group_size}
    plan = plan_tensors(cfg, sources, hf_layout, args.dtype, group_size)
    tok_offset = lay_out(plan)
    header = header_json(config, plan, tok.type, tok_offset, len(tok.blob))
    data_start = align_up(16 + len(header), DATA_ALIGN)
    total = data_start + tok_offset + len(tok.blob)

    print(f"{config['family']} dim {cfg['dim']} hidden {cfg['hidden_dim']} layers {cfg['n_layers']} "
          f"heads {cfg['n_heads']}/{cfg['n_kv_heads']} head_dim {cfg['head_dim']} vocab {cfg['vocab_size']} "
          f"-> {args.dtype}" + (f" group {group_size}" if group_size else "") +
          f", {len(plan)} tensors, {human(total)}, tokenizer {tok.type} from {tok.origin}", flush=True)

    tmp = args.output + ".tmp"
    stats = QuantStats()
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<IQ", FORMAT_VERSION, len(header)) + header)
            done = 0
            for i, t in enumerate(plan):
                write_tensor(f, data_start, t, stats)
                nbytes = t.nbytes + (t.scales_nbytes if t.dtype == "int8" else 0)
                done += nbytes
                if not args.quiet:
                    print(f"[{i + 1:{len(str(len(plan)))}d}/{len(plan)}] {t.name:<24} {t.dtype:<4} "
                          f"{str(list(t.shape)):<14} {human(nbytes):>10}   {human(done)} written", flush=True)
            f.seek(data_start + tok_offset)
            f.write(tok.blob)
            f.truncate(total)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, args.output)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

    if stats.errors:
        errs = [e for _, e in stats.errors]
        worst = max(stats.errors, key=lambda x: x[1])
        print(f"int8 group {group_size}: relative error ||W - dequant(W)|| / ||W|| averaged over "
              f"{len(errs)} tensors = {np.mean(errs):.5f} (max {worst[1]:.5f} in {worst[0]})")
    print(f"wrote {args.output} ({human(total)})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf", metavar="DIR", help="Hugging Face LlamaForCausalLM folder")
    src.add_argument("--llama2c", metavar="CHECKPOINT", help='llama2.c "version 0" checkpoint')
    ap.add_argument("--tokenizer", metavar="PATH",
                    help="tokenizer.model (SentencePiece or tiktoken) or tokenizer.json; required with "
                         "--llama2c, overrides the folder's own with --hf")
    ap.add_argument("--dtype", choices=WEIGHT_DTYPES, default="fp16", help="linear weight dtype (default fp16)")
    ap.add_argument("--group_size", type=int, default=None,
                    help=f"int8: input values per scale (default {DEFAULT_GROUP_SIZE})")
    ap.add_argument("-q", "--quiet", action="store_true", help="no per-tensor progress lines")
    ap.add_argument("output", help="model file to write (written as OUTPUT.tmp, then renamed)")
    args = ap.parse_args(argv)
    try:
        export(args)
    except Refusal as e:
        print(f"export.py: refused: {e}", file=sys.stderr)
        return 2
    except (ExportError, OSError, ValueError, KeyError) as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("export.py: interrupted; nothing written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
