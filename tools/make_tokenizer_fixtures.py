#!/usr/bin/env python3
"""Compute the token ids that reference libraries give for a fixed set of strings.

Writes test/fixtures/tokenizer_ids.json, which test/test_bpe_tokenizer.cpp compares our tokenizers with:
  llama3  ../shared/models/llama3/tokenizer.model through tiktoken (Meta's own reference: the
          regex below, ranks from the file, the 256 special tokens), and tokenizer.json through
          Hugging Face tokenizers. The script stops if the two disagree on any string.
  llama2  ../shared/models/llama2/tokenizer.model through sentencepiece.
  tok512  ../shared/models/stories260K/tok512.model through sentencepiece.
Ids are stored without BOS (the test adds it itself); each tokenizer also records `decoded`, what its
reference library decodes the ids to, where that differs from the string (tok512 collapses runs of
spaces, so its round trip is not the identity).

    pip install tiktoken tokenizers sentencepiece
    python3 tools/make_tokenizer_fixtures.py [--models ../shared/models] [--out test/fixtures/tokenizer_ids.json]
"""

import argparse
import json
import os
import re
import sys

import sentencepiece
import tiktoken
import tiktoken.load
import tokenizers

# The Llama 3 pre-tokenizer regex (meta-llama/llama-models, models/llama3/tokenizer.py; the same string
# is the Split pattern in tokenizer.json).
PAT_STR = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")

LONG_PARAGRAPH = (
    "The history of computing is a story of abstraction. Early machines were programmed by rewiring "
    "panels and flipping switches; each new layer - assembly language, compilers, operating systems, "
    "the web - let people say more while saying less. In 1957, FORTRAN promised that scientists could "
    "write formulas instead of machine code, and by the 1970s C had made portable systems programming "
    "practical. Today a language model with 8,030,261,248 parameters can be run on a single GPU, "
    "reading a prompt of 8192 tokens in well under a second. Yet the basics haven't changed: memory is "
    "slower than arithmetic, caches matter, and the fastest code is the code that doesn't run. "
    "\"Premature optimization is the root of all evil,\" Knuth wrote (though he also said we shouldn't "
    "pass up our opportunities in that critical 3%). Engineers who've measured before optimizing "
    "rarely regret it; those who didn't usually do.\n\nA tokenizer is a small part of this picture, "
    "but it's the first thing every request touches, so it had better be right: one wrong id and the "
    "model sees a different text.")

PYTHON_CODE = (
    "def fib(n: int) -> int:\n"
    "    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
    "    a, b = 0, 1\n"
    "    for _ in range(n):\n"
    "        a, b = b, a + b\n"
    "    return a\n"
    "\n"
    "if __name__ == '__main__':\n"
    "    print([fib(i) for i in range(10)])  # [0, 1, 1, 2, ...]\n")

CPP_CODE = (
    "#include <vector>\n"
    "\n"
    "template <typename T>\n"
    "T sum(const std::vector<T>& v) {\n"
    "\tT s{};\n"
    "\tfor (const auto& x : v) {\n"
    "\t\ts += x;  // accumulate\n"
    "\t}\n"
    "\treturn s;\n"
    "}\r\n")

# (name, text). Names are what the C++ test prints on a mismatch.
STRINGS = [
    ("empty", ""),
    ("english", "Once upon a time, there was a little girl named Lily. She loved to play outside."),
    ("hello", "Hello world"),
    ("single_letter", "a"),
    ("python_code", PYTHON_CODE),
    ("cpp_code", CPP_CODE),
    ("integer", "1234567"),
    ("decimal", "3.14159"),
    ("thousands", "12,345"),
    ("money", "$1,000,000.00 and 42% of 7/8"),
    ("other_digits", "\u0663\u0664\u0665 \u00bd \u2167 \uff11\uff12"),
    ("spaces_between", "a  b   c"),
    ("leading_space", " hello"),
    ("leading_spaces", "   hello"),
    ("trailing_spaces", "hello   "),
    ("only_spaces", "     "),
    ("newlines_tab", "\n\n\t  x"),
    ("crlf", "line one\r\nline two\r\n"),
    ("blank_lines", "a\n\n\n\nb\n \n  \nc"),
    ("long_space_run", "x" + " " * 40 + "y"),
    ("contractions", "I'll, you're, it's, DON'T, we'VE, she'd, I'm"),
    ("long_s_contraction", "it'\u017ft IT'\u017f"),
    ("chinese", "\u4f60\u597d\uff0c\u4e16\u754c"),
    ("japanese", "\u3053\u3093\u306b\u3061\u306f\u3001\u4e16\u754c\u3002\u30ab\u30bf\u30ab\u30ca\u3068\u6f22\u5b57\u3002"),
    ("korean", "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4"),
    ("emoji", "\U0001f44d\U0001f3fd \U0001f1eb\U0001f1f7 \U0001f600"),
    ("emoji_zwj", "family: \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466!"),
    ("mixed_scripts", "English, \u0420\u0443\u0441\u0441\u043a\u0438\u0439, \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac, "
                      "\u0627\u0644\u0639\u0631\u0628\u064a\u0629, \u0939\u093f\u0928\u094d\u0926\u0940, \u4e2d\u6587 and \u65e5\u672c\u8a9e."),
    ("accented", "na\u00efve caf\u00e9 r\u00e9sum\u00e9 Stra\u00dfe"),
    ("combining", "cafe\u0301 n\u0303"),
    ("unicode_spaces", "x\u00a0\u00a0y a\u3000\u3000b c\u2028d"),
    ("nel", "a\u0085b x\u0085\u0085!! y\u0085 \u0085z"),
    ("control_chars", "a\x00b\x0bc\x0cd\x7fe"),
    ("replacement_char", "bad \ufffd byte"),
    ("punctuation_runs", "Wait... what?!?! ---> (yes) [no] {maybe} <|not special|>"),
    ("special_text", "<|begin_of_text|>hi<|eot_id|>"),
    ("repeated_letter", "a" * 300),
    ("long_paragraph", LONG_PARAGRAPH),
]

# Texts with the special-token strings, for encode_with_special (tiktoken allowed_special="all").
SPECIAL_STRINGS = [
    ("chat", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("adjacent", "<|eot_id|><|eot_id|>x<|end_of_text|>"),
    ("reserved", "a<|reserved_special_token_0|>b<|reserved_special_token_250|>c"),
    ("near_misses", "<|eot_id|<|eot_id |> <|unknown|> <|eot_id|>"),
    ("no_special", "plain text"),
]


def llama3_special_tokens(tokenizer_json):
    """The 256 special tokens, from tokenizer.json's added_tokens (the authority for their names)."""
    with open(tokenizer_json, encoding="utf-8") as f:
        added = json.load(f)["added_tokens"]
    specials = {t["content"]: t["id"] for t in added}
    assert sorted(specials.values()) == list(range(128000, 128256)), "expected ids 128000..128255"
    return specials


def has_special_text(text, specials):
    return any(s in text for s in specials)


def make_llama3(models):
    model_path = os.path.join(models, "llama3", "tokenizer.model")
    json_path = os.path.join(models, "llama3", "tokenizer.json")
    specials = llama3_special_tokens(json_path)
    enc = tiktoken.Encoding("llama3", pat_str=PAT_STR, mergeable_ranks=tiktoken.load.load_tiktoken_bpe(model_path),
                            special_tokens=specials)
    hf = tokenizers.Tokenizer.from_file(json_path)

    ids = []
    for name, text in STRINGS:
        plain = enc.encode(text, disallowed_special=())
        # Hugging Face always splits off added tokens found in the text, so where the text holds one it
        # is compared with tiktoken's encoding that allows them.
        expect_hf = enc.encode(text, allowed_special="all") if has_special_text(text, specials) else plain
        got_hf = hf.encode(text, add_special_tokens=False).ids
        if got_hf != expect_hf:
            sys.exit(f"llama3: tiktoken and tokenizers disagree on {name!r}:\n  {expect_hf}\n  {got_hf}")
        if enc.decode_bytes(plain) != text.encode("utf-8"):
            sys.exit(f"llama3: tiktoken does not round-trip {name!r}")
        ids.append(plain)
    special_ids = []
    for name, text in SPECIAL_STRINGS:
        got = enc.encode(text, allowed_special="all")
        got_hf = hf.encode(text, add_special_tokens=False).ids
        if got != got_hf:
            sys.exit(f"llama3: tiktoken and tokenizers disagree on special string {name!r}:\n  {got}\n  {got_hf}")
        special_ids.append(got)
    return {
        "files": ["llama3/tokenizer.model", "llama3/tokenizer.json"],
        "reference": f"tiktoken {tiktoken.__version__} on tokenizer.model and tokenizers {tokenizers.__version__} "
                     "on tokenizer.json, identical on every string",
        "bos_id": 128000,
        "eos_id": 128001,
        "ids": ids,
        "special_ids": special_ids,
        "special_tokens": {str(v): k for k, v in sorted(specials.items(), key=lambda kv: kv[1])},
    }


def make_sentencepiece(models, rel):
    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(models, rel))
    ids, decoded = [], {}
    for name, text in STRINGS:
        got = sp.encode(text)
        ids.append(got)
        back = sp.decode(got)
        if back != text:
            decoded[name] = back
    return {
        "files": [rel],
        "reference": f"sentencepiece {sentencepiece.__version__}",
        "bos_id": sp.bos_id(),
        "eos_id": sp.eos_id(),
        "ids": ids,
        "decoded": decoded,
    }


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=os.path.join(root, "..", "shared", "models"))
    ap.add_argument("--out", default=os.path.join(root, "test", "fixtures", "tokenizer_ids.json"))
    args = ap.parse_args()

    out = {
        "comment": "Generated by tools/make_tokenizer_fixtures.py; ids exclude BOS. Do not edit by hand.",
        "strings": [{"name": n, "text": t} for n, t in STRINGS],
        "special_strings": [{"name": n, "text": t} for n, t in SPECIAL_STRINGS],
        "tokenizers": {
            "llama3": make_llama3(args.models),
            "llama2": make_sentencepiece(args.models, "llama2/tokenizer.model"),
            "tok512": make_sentencepiece(args.models, "stories260K/tok512.model"),
        },
    }
    # One string's ids per line keeps the file small and its diffs readable. Only arrays that span lines
    # are rewritten, and a JSON string never holds a raw newline, so string contents are untouched.
    text = json.dumps(out, ensure_ascii=False, indent=1)
    text = re.sub(r"\[\n[\d,\s]*\]", lambda m: "[" + ", ".join(re.findall(r"\d+", m.group(0))) + "]", text)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"wrote {args.out} ({len(text.encode('utf-8'))} bytes)")


if __name__ == "__main__":
    main()
