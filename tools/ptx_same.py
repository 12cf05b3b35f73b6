#!/usr/bin/env python3
"""Whether two builds of a CUDA file compute the same thing in every kernel, from their PTX.

    nvcc -std=c++17 -O3 -arch=sm_90 -DKUIPER_WITH_CUDA -Ikuiper/include -Ikuiper/source/op -Ikuiper/source \\
         -ptx FILE.cu -o new.ptx                  # and the same for the older version of FILE.cu: old.ptx
    python3 tools/ptx_same.py old.ptx new.ptx

For a refactor of device code checked on a machine without a GPU: for each kernel (matched by its
mangled name, the anonymous namespace's per-file hash left out), every register definition is given a
value number, a hash of its opcode, guard predicate and operands' value numbers (operands of commutative
operations sorted, the two factors of fma / mad too), so register names and the order of independent
instructions do not matter. The kernel's effects (stores, cp.async copies, barriers, branches, and the
loads, shuffles and MMAs it executes) are compared as multisets of those numbers. Equal effects mean the
same operations on the same values; a loop is followed in program order, once, which is the same for
both builds when their loops have the same shape (the label count is printed beside). One identity is
known besides commutativity: (x & 3) < 2 and (x & 2) == 0 are the same predicate.

Exit 0 when every kernel of old.ptx is in new.ptx with equal effects, 1 otherwise.
"""
import collections
import hashlib
import re
import sys

COMMUTATIVE = {"add", "or", "and", "xor", "mul", "min", "max"}
EFFECT_PREFIXES = ("st.", "cp.async", "red.", "atom.", "bar", "bra", "ret", "membar", "fence", "griddepcontrol")
COUNTED_DEFS = ("shfl", "mma", "ld.shared", "ld.global")


def digest(*parts):
    return hashlib.md5(repr(parts).encode()).hexdigest()[:16]


def kernels(path):
    text = open(path).read()
    # The anonymous namespace's mangled name holds the file's name and hashes: <n>_GLOBAL__N__<hash>_<n>_<file>_cu_<8 hex>.
    text = re.sub(r"\d+_GLOBAL__N__[0-9a-f]+_\d+_\w+?_cu_[0-9a-f]{8}", "ANON", text)
    return {m.group(1): m.group(0) for m in re.finditer(r"\.entry (\S+)\((.*?)\n\}\n", text, re.S)}


def split_operands(args):
    # commas outside {...} and [...]
    return [t.strip() for t in re.split(r",(?![^{]*\})(?![^\[]*\])", args)] if args else []


def effects_of(body):
    value = {}       # register -> value number
    masked = {}      # value number of (x & 2) or (x & 3) -> (mask, value number of x)
    effects = collections.Counter()
    labels = 0

    def number(tok):
        tok = tok.strip()
        if tok.startswith("{"):
            return tuple(number(x) for x in tok.strip("{}").split(","))
        if tok.startswith("["):
            inner = tok.strip("[]")
            m = re.match(r"(%\w+)([+-]\d+)?$", inner)
            return ("addr", number(m.group(1)), m.group(2) or "0") if m else ("addr", inner)
        if tok.startswith("!%"):
            return ("not", number(tok[1:]))
        if tok.startswith("%"):
            return value.get(tok, ("in", tok if not re.match(r"%(r|rd|rs|f|fd|p|h)\d+$", tok) else "undef"))
        return ("imm", tok)

    for line in re.sub(r"//.*", "", body).split("\n"):
        line = line.strip().rstrip(";")
        if line.startswith("$"):
            labels += 1
            continue
        if not line or line.startswith((".", "{", "}", ")")):
            continue
        guard = None
        m = re.match(r"@(!?%\w+)\s+(.*)", line)
        if m:
            guard, line = number(m.group(1)), m.group(2)
        parts = line.split(None, 1)
        op, ops = parts[0], split_operands(parts[1] if len(parts) > 1 else "")
        if op.startswith(EFFECT_PREFIXES) or not ops:
            if op.startswith(("bra", "ret", "bar", "membar", "fence", "griddepcontrol", "cp.async.commit",
                              "cp.async.wait")):
                ops = []  # branch targets and barrier ids: labels are renumbered between builds
            effects[digest(op, guard, tuple(number(t) for t in ops))] += 1
            continue
        dst, srcs = ops[0], [number(t) for t in ops[1:]]
        base = op.split(".")[0]
        if base in COMMUTATIVE and len(srcs) == 2:
            srcs.sort(key=repr)
        if base in ("fma", "mad") and len(srcs) == 3:
            srcs = sorted(srcs[:2], key=repr) + srcs[2:]
        v = digest(op, guard, tuple(srcs))
        if op == "and.b32" and len(srcs) == 2:
            masks = [s for s in srcs if s in (("imm", "2"), ("imm", "3"))]
            others = [s for s in srcs if s not in masks]
            if masks and others:
                masked[v] = (masks[0][1], others[0])
        if op in ("setp.lt.u32", "setp.eq.s32") and len(srcs) == 2 and srcs[0] in masked:
            mask, x = masked[srcs[0]]
            if (op, mask, srcs[1]) in (("setp.lt.u32", "3", ("imm", "2")), ("setp.eq.s32", "2", ("imm", "0"))):
                v = digest("bit 1 of", x, "clear")
        if dst.startswith("{"):
            for i, reg in enumerate(x.strip() for x in dst.strip("{}").split(",")):
                value[reg] = digest(v, i)
        else:
            value[dst] = digest("guarded", guard, v, value.get(dst)) if guard is not None else v
        if op.startswith(COUNTED_DEFS):
            effects[digest(op, v)] += 1
    return effects, labels


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    old, new = kernels(sys.argv[1]), kernels(sys.argv[2])
    if not old:
        sys.exit(f"ptx_same: no kernels in {sys.argv[1]}")
    ok = True
    for name in sorted(old):
        short = name if len(name) < 100 else name[-100:]
        if name not in new:
            print(f"missing in {sys.argv[2]}: {short}")
            ok = False
            continue
        (ea, la), (eb, lb) = effects_of(old[name]), effects_of(new[name])
        same = ea == eb and la == lb
        ok &= same
        detail = "" if same else f" ({sum((ea - eb).values())} effects only in old, {sum((eb - ea).values())} only in new)"
        print(f"{'same' if same else 'DIFFERENT'}  labels {la}/{lb}  effects {sum(ea.values())}/{sum(eb.values())}  "
              f"{short}{detail}")
    print(f"{len(old)} kernels: {'all the same' if ok else 'some differ'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
