#!/usr/bin/env python3
"""Read a llama_infer model file (docs/model_format.md, version 1) with numpy.

    mf = ModelFile("model.bin")
    mf.config                    # the header's config dict
    mf.tensors                   # name -> TensorInfo(name, dtype, shape, offset, nbytes), file order
    mf.raw("layers.0.wq")        # memmapped array as stored (bf16 comes back as its uint16 bits)
    mf.float32("layers.0.wq")    # float32 copy; int8 is dequantised with its .scales
    mf.tokenizer_type, mf.tokenizer_blob()
    mf.check()                   # problems against the spec's tensor table ([] when none)

    python3 tools/model_file.py FILE   prints the config, the tensor table and any problems
                                       (exit status 1 when there are problems).

It is written from the spec, independently of tools/export.py, so the tests can use it to check
the exporter.
"""

import json
import struct
import sys
from dataclasses import dataclass

import numpy as np

MAGIC = b"LLMI"
VERSION = 1
NUMPY_DTYPES = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2"), "bf16": np.dtype("<u2"),
                "int8": np.dtype("i1"), "int32": np.dtype("<i4")}


class FormatError(Exception):
    pass


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: tuple
    offset: int   # absolute offset in the file
    nbytes: int


class ModelFile:
    def __init__(self, path: str):
        self.path = path
        self._map = np.memmap(path, dtype=np.uint8, mode="r")
        size = len(self._map)
        if size < 16 or bytes(self._map[:4]) != MAGIC:
            raise FormatError(f"{path}: no LLMI magic")
        version, header_len = struct.unpack("<IQ", bytes(self._map[4:16]))
        if version != VERSION:
            raise FormatError(f"{path}: format version {version}, this reader knows {VERSION}")
        if header_len > size - 16:
            raise FormatError(f"{path}: header length {header_len} exceeds the file")
        self.header = json.loads(bytes(self._map[16:16 + header_len]).decode("utf-8"))
        self.header_len = header_len
        self.data_start = (16 + header_len + 4095) // 4096 * 4096
        self.config = self.header["config"]
        self.tensors = {}
        for t in self.header["tensors"]:
            info = TensorInfo(t["name"], t["dtype"], tuple(t["shape"]), self.data_start + t["offset"], t["nbytes"])
            if t["offset"] % 256:
                raise FormatError(f"{path}: tensor {info.name} offset {t['offset']} is not 256-byte aligned")
            if info.dtype not in NUMPY_DTYPES:
                raise FormatError(f"{path}: tensor {info.name} has unknown dtype {info.dtype}")
            n = int(np.prod(info.shape, dtype=np.int64))
            if n * NUMPY_DTYPES[info.dtype].itemsize != info.nbytes:
                raise FormatError(f"{path}: tensor {info.name} nbytes {info.nbytes} does not match its shape")
            if info.offset + info.nbytes > size:
                raise FormatError(f"{path}: tensor {info.name} lies beyond the end of the file")
            if info.name in self.tensors:
                raise FormatError(f"{path}: tensor {info.name} appears twice")
            self.tensors[info.name] = info
        tok = self.header.get("tokenizer")
        self.tokenizer_type = tok["type"] if tok else None
        self._tok = (self.data_start + tok["offset"], tok["nbytes"]) if tok else None
        if tok and (tok["offset"] % 256 or self._tok[0] + self._tok[1] > size):
            raise FormatError(f"{path}: tokenizer blob misaligned or beyond the end of the file")
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors.values())
        if self._tok:
            spans.append((self._tok[0], self._tok[0] + self._tok[1], "tokenizer"))
            spans.sort()
        for (a0, a1, an), (b0, _, bn) in zip(spans, spans[1:]):
            if b0 < a1:
                raise FormatError(f"{path}: {an} and {bn} overlap")

    def raw(self, name: str) -> np.ndarray:
        """The stored array, memmapped (read only). bf16 is returned as uint16 bits."""
        t = self.tensors[name]
        return self._map[t.offset:t.offset + t.nbytes].view(NUMPY_DTYPES[t.dtype]).reshape(t.shape)

    def float32(self, name: str) -> np.ndarray:
        """float32 copy; bf16 widened exactly; int8 times its group scales."""
        t = self.tensors[name]
        a = self.raw(name)
        if t.dtype == "bf16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        if t.dtype == "int8":
            s = self.raw(name + ".scales")
            g = t.shape[1] // s.shape[1]
            return (a.reshape(t.shape[0], s.shape[1], g).astype(np.float32) * s[:, :, None]).reshape(t.shape)
        return a.astype(np.float32)

    def tokenizer_blob(self) -> bytes:
        return bytes(self._map[self._tok[0]:self._tok[0] + self._tok[1]]) if self._tok else b""

    def expected_tensors(self) -> dict:
        """name -> (dtype, shape) from the spec's tensor table for this config."""
        c = self.config
        D, F, V, wd = c["dim"], c["hidden_dim"], c["vocab_size"], c["weight_dtype"]
        Q, KV = c["n_heads"] * c["head_dim"], c["n_kv_heads"] * c["head_dim"]
        want = {"tok_embeddings": ("fp16" if wd == "int8" else wd, (V, D)), "norm": ("fp32", (D,))}
        linear = {"output": (V, D)} if not c["tied_embeddings"] else {}
        for i in range(c["n_layers"]):
            p = f"layers.{i}."
            want[p + "attention_norm"] = ("fp32", (D,))
            want[p + "ffn_norm"] = ("fp32", (D,))
            linear.update({p + "wq": (Q, D), p + "wk": (KV, D), p + "wv": (KV, D), p + "wo": (D, Q),
                           p + "w1": (F, D), p + "w2": (D, F), p + "w3": (F, D)})
        for name, shape in linear.items():
            want[name] = (wd, shape)
            if wd == "int8":
                want[name + ".scales"] = ("fp32", (shape[0], shape[1] // c["group_size"]))
        return want

    def check(self) -> list:
        """Problems against the spec: missing, extra or mis-typed tensors, bad group size."""
        problems = []
        c = self.config
        if c["weight_dtype"] == "int8":
            g = c["group_size"]
            if g <= 0 or c["dim"] % g or c["hidden_dim"] % g or (c["n_heads"] * c["head_dim"]) % g:
                problems.append(f"group_size {g} does not divide dim, hidden_dim and n_heads*head_dim")
                return problems
        elif c.get("group_size", 0) != 0:
            problems.append(f"group_size {c['group_size']} with weight_dtype {c['weight_dtype']}")
        want = self.expected_tensors()
        for name, (dtype, shape) in want.items():
            t = self.tensors.get(name)
            if t is None:
                problems.append(f"missing tensor {name}")
            elif (t.dtype, t.shape) != (dtype, shape):
                problems.append(f"{name} is {t.dtype} {list(t.shape)}, expected {dtype} {list(shape)}")
        problems += [f"unexpected tensor {n}" for n in self.tensors if n not in want]
        if self.data_start % 4096:
            problems.append("data_start is not page aligned")
        if self.tokenizer_type not in ("sentencepiece", "tiktoken"):
            problems.append(f"tokenizer type {self.tokenizer_type!r}")
        return problems


def main(argv) -> int:
    if len(argv) != 2:
        print("usage: python3 tools/model_file.py FILE", file=sys.stderr)
        return 2
    try:
        mf = ModelFile(argv[1])
    except (FormatError, OSError, ValueError, KeyError) as e:
        print(f"model_file.py: {e}", file=sys.stderr)
        return 1
    print(f"{mf.path}: format version {VERSION}, header {mf.header_len} bytes, data_start {mf.data_start}")
    for k, v in mf.config.items():
        print(f"  {k:<16} {json.dumps(v)}")
    print(f"{'tensor':<28} {'dtype':<5} {'shape':<16} {'offset':>14} {'nbytes':>14}")
    for t in mf.tensors.values():
        print(f"{t.name:<28} {t.dtype:<5} {str(list(t.shape)):<16} {t.offset - mf.data_start:>14} {t.nbytes:>14}")
    if mf._tok:
        print(f"tokenizer: {mf.tokenizer_type}, {mf._tok[1]} bytes at {mf._tok[0] - mf.data_start}")
    problems = mf.check()
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
