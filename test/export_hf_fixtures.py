#!/usr/bin/env python3
"""CTest fixture setup (FIXTURES_SETUP hf_exports): export every Hugging Face fixture in
test/fixtures/hf with tools/export.py, for test_hf_fixtures to run through the C++ engine.

    python3 test/export_hf_fixtures.py OUT_DIR [--shared DIR]

Writes OUT_DIR/<fixture>.<dtype>.bin for dtype fp32, fp16, bf16 and int8, the int8 file at the
largest group size in GROUP_CANDIDATES that divides dim, hidden_dim and n_heads*head_dim, and for
SWEEP_FIXTURE also OUT_DIR/<fixture>.int8_g<G>.bin for every other allowed group size (the C++
test reports the logit error per group size: the evidence behind export.py's default of 64).

The fixtures hold no tokenizer (vocab 512, bos 1 / eos 2): every export embeds
stories260K/tok512.model from ../shared/models (or --shared DIR/models, or $KUIPER_SHARED_DIR).
Exit status: 0 done; 1 an export failed; 77 the tokenizer is absent (CTest: SKIP_RETURN_CODE 77).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT = os.path.join(ROOT, "tools", "export.py")
FIXTURES = os.path.join(ROOT, "test", "fixtures", "hf")
DTYPES = ("fp32", "fp16", "bf16", "int8")
# Largest first. 4 is there for llama2_mha: its hidden_dim 172 = 4 * 43 admits no group of 8 or more.
GROUP_CANDIDATES = (128, 64, 32, 16, 8, 4)
SWEEP_FIXTURE = "llama3_gqa"  # dim 128, hidden_dim 192: groups 64, 32, 16, 8, 4 are allowed (not 128)


def allowed_groups(config: dict) -> list:
    """Group sizes of GROUP_CANDIDATES that divide every input width of a quantised linear."""
    dim, hidden = config["hidden_size"], config["intermediate_size"]
    q_dim = config["num_attention_heads"] * config.get("head_dim", dim // config["num_attention_heads"])
    return [g for g in GROUP_CANDIDATES if all(n % g == 0 for n in (dim, hidden, q_dim))]


def export(folder: str, tok: str, dtype: str, out: str, group: int = 0) -> None:
    cmd = [sys.executable, EXPORT, "-q", "--hf", folder, "--tokenizer", tok, "--dtype", dtype]
    if group:
        cmd += ["--group_size", str(group)]
    p = subprocess.run(cmd + [out], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd + [out])} failed (rc {p.returncode}):\n{p.stderr.strip()}")
    # export.py prints the weights' own int8 error; pass it on, it explains the logit error.
    for line in p.stdout.splitlines():
        if line.startswith("int8 group"):
            print(f"    {line}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--shared", default=os.environ.get("KUIPER_SHARED_DIR") or os.path.join(ROOT, "..", "shared"))
    args = ap.parse_args()

    # Old exports must not outlive a failed or skipped setup: start from an empty folder.
    shutil.rmtree(args.out_dir, ignore_errors=True)
    tok = os.path.join(args.shared, "models", "stories260K", "tok512.model")
    if not os.path.isfile(tok):
        print(f"skipped: needs the 512-token tokenizer at {os.path.normpath(tok)} (../shared/models)")
        return 77
    os.makedirs(args.out_dir)

    names = sorted(n for n in os.listdir(FIXTURES) if os.path.isfile(os.path.join(FIXTURES, n, "config.json")))
    made = 0
    try:
        for name in names:
            folder = os.path.join(FIXTURES, name)
            with open(os.path.join(folder, "config.json")) as f:
                groups = allowed_groups(json.load(f))
            if not groups:
                raise RuntimeError(f"{name}: no group size of {GROUP_CANDIDATES} divides its dims")
            print(f"{name}: int8 group size {groups[0]} (allowed: {', '.join(map(str, groups))})")
            for dtype in DTYPES:
                export(folder, tok, dtype, os.path.join(args.out_dir, f"{name}.{dtype}.bin"),
                       groups[0] if dtype == "int8" else 0)
                made += 1
            if name == SWEEP_FIXTURE:
                for g in groups[1:]:
                    export(folder, tok, "int8", os.path.join(args.out_dir, f"{name}.int8_g{g}.bin"), g)
                    made += 1
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{made} exports of {len(names)} fixtures in {os.path.normpath(args.out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
