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
known besides commutativity: (x & 3) < 2 and (x & 2) == 0 are the same predicate; a mov of one register
to another is the value itself; integer sums, differences and products by constants (shifts too) are compared as linear forms
modulo 2^n, so any order or grouping of the same arithmetic is the same. Kernels are named as c++filt (binutils) prints them.

Exit 0 when every kernel of old.ptx is in new.ptx with equal effects, 1 otherwise. "Different" is a
place to look, not a verdict: the compiler may write the same arithmetic otherwise after a change
elsewhere (seen: ~(x & 31) as ~x | -32, an index widened to 64 bits before or after a multiply), which
this comparison does not follow; the GPU tests decide those. test/ptx_same_test.py checks that a
rewrite is found the same and three one-line bugs different.
"""
import collections
import hashlib
import re
import subprocess
import sys

COMMUTATIVE = {"add", "or", "and", "xor", "mul", "min", "max"}
EFFECT_PREFIXES = ("st.", "cp.async", "red.", "atom.", "bar", "bra", "ret", "membar", "fence", "griddepcontrol")
COUNTED_DEFS = ("shfl", "mma", "ld.shared", "ld.global")


def digest(*parts):
    return hashlib.md5(repr(parts).encode()).hexdigest()[:16]


ANON = "12_GLOBAL__N_1"  # a mangled anonymous namespace with no file in it (c++filt: "(anonymous namespace)")


def without_file_names(text):
    """The anonymous namespaces' mangled names, <n>_GLOBAL__N__<hash>_<len>_<file>_cu_<hash> (n its length),
    replaced by ANON: they differ between two files, and kernels, their parameters and their static shared
    arrays all carry them."""
    out, pos = [], 0
    for m in re.finditer(r"(\d+)(_GLOBAL__N_)", text):
        digits = m.group(1)
        for i in range(len(digits)):  # the length is a suffix of the digit run
            n = int(digits[i:])
            after = m.start(2) + n
            if after <= len(text) and (after == len(text) or text[after].isdigit() or text[after] in "EIS"):
                out.append(text[pos:m.start(1) + i])
                out.append(ANON)
                pos = after
                break
    out.append(text[pos:])
    return "".join(out)


def kernels(path):
    text = without_file_names(open(path).read())
    found = {m.group(1): m.group(0) for m in re.finditer(r"\.entry (\S+)\((.*?)\n\}\n", text, re.S)}
    names = list(found)
    readable = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
    if len(readable) < len(names):
        readable = names  # no c++filt: the mangled names
    # Its parameters and static shared arrays are named after it: as "KERNEL", so that kernels whose
    # names differ (a template argument added) compare.
    return {nice: found[name].replace(name[2:], "KERNEL") for name, nice in zip(names, readable)}


def split_operands(args):
    # commas outside {...} and [...]
    return [t.strip() for t in re.split(r",(?![^{]*\})(?![^\[]*\])", args)] if args else []


LINEAR_OPS = {"add", "sub", "mul", "shl", "neg"}


def linear_form(op, srcs, linear):
    """(bits, ((atom, coefficient), ...), constant) for integer +, -, * constant, << constant and
    negation of n-bit values, modulo 2^n: the same for every order and grouping of the same sums."""
    parts = op.split(".")
    if parts[0] not in LINEAR_OPS or parts[-1][0] not in ("s", "u", "b") or parts[-1][1:] not in ("32", "64"):
        return None
    if parts[0] == "mul" and (len(parts) != 3 or parts[1] != "lo"):
        return None
    bits = int(parts[-1][1:])
    mod = 1 << bits

    def form_of(x):
        if x in linear and linear[x][0] == bits:
            return dict(linear[x][1]), linear[x][2]
        if isinstance(x, tuple) and len(x) == 2 and x[0] == "imm" and re.match(r"-?\d+$", x[1]):
            return {}, int(x[1]) % mod
        return {x: 1}, 0

    def combine(a, b, sign):
        terms = dict(a[0])
        for atom, c in b[0].items():
            terms[atom] = terms.get(atom, 0) + sign * c
        return terms, a[1] + sign * b[1]

    def scaled(a, k):
        return {atom: c * k for atom, c in a[0].items()}, a[1] * k

    forms = [form_of(x) for x in srcs]
    if parts[0] == "add" and len(forms) == 2:
        terms, const = combine(forms[0], forms[1], 1)
    elif parts[0] == "sub" and len(forms) == 2:
        terms, const = combine(forms[0], forms[1], -1)
    elif parts[0] == "neg" and len(forms) == 1:
        terms, const = scaled(forms[0], -1)
    elif parts[0] in ("mul", "shl") and len(forms) == 2 and not forms[1][0]:
        terms, const = scaled(forms[0], forms[1][1] if parts[0] == "mul" else 1 << forms[1][1])
    elif parts[0] == "mul" and len(forms) == 2 and not forms[0][0]:
        terms, const = scaled(forms[1], forms[0][1])
    else:
        return None
    kept = tuple(sorted(((atom, c % mod) for atom, c in terms.items() if c % mod), key=repr))
    return bits, kept, const % mod


def effects_of(body):
    value = {}       # register -> value number
    masked = {}      # value number of (x & 2) or (x & 3) -> (mask, value number of x)
    linear = {}      # value number of integer add / sub / mul / shl arithmetic -> its linear form
    effects = collections.Counter()
    labels = 0

    def number(tok):
        tok = tok.strip()
        if tok.startswith("{"):
            return tuple(number(x) for x in tok.strip("{}").split(","))
        if tok.startswith("["):
            inner = tok.strip("[]")
            m = re.match(r"(%\w+)((?:\+-?|-)\d+)?$", inner)  # [%rd5], [%rd5+16], [%rd5+-128]
            return ("addr", number(m.group(1)), int((m.group(2) or "0").replace("+", ""))) if m else ("addr", inner)
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
        if base == "mov" and len(srcs) == 1 and not dst.startswith("{") and guard is None:
            value[dst] = srcs[0]  # a copy: the value itself
            continue
        if base in COMMUTATIVE and len(srcs) == 2:
            srcs.sort(key=repr)
        if base in ("fma", "mad") and len(srcs) == 3:
            srcs = sorted(srcs[:2], key=repr) + srcs[2:]
        v = digest(op, guard, tuple(srcs))
        form = linear_form(op, srcs, linear) if guard is None else None
        if form is not None:  # integer arithmetic (mod 2^n): one value per linear form
            v = digest("linear", form)
            linear[v] = form
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
