#!/usr/bin/env python3
"""Expected token ids of chat turns, from the reference libraries (test/fixtures/chat_ids.json).

Llama 3: the chat template shipped in ../shared/models/llama3/tokenizer_config.json, rendered with
jinja2 as Hugging Face does, then encoded by the `tokenizers` library from tokenizer.json (special
tokens recognised). A later turn's ids are the ids of the whole rendered conversation minus those of
the conversation before it (which ends with the previous reply and its <|eot_id|>).
Llama 2: Meta's documented format ([INST], <<SYS>>), encoded with `sentencepiece`.

    pip install jinja2 tokenizers sentencepiece
    python3 tools/make_chat_fixtures.py ../shared/models test/fixtures/chat_ids.json
"""
import json
import sys

import jinja2
import sentencepiece as spm
import tokenizers

models, out = sys.argv[1], sys.argv[2]
cases = [
    {"system": "", "turns": ["Hello!"]},
    {"system": "You are a helpful assistant.", "turns": ["What is 2 + 2?"]},
    {"system": "Answer briefly.", "turns": ["  Name a colour.  ", "And another one, in 中文?"],
     "replies": ["Blue."]},
]

cfg = json.load(open(f"{models}/llama3/tokenizer_config.json"))
template = jinja2.Environment().from_string(cfg["chat_template"])
tok3 = tokenizers.Tokenizer.from_file(f"{models}/llama3/tokenizer.json")


def render3(messages):
    return template.render(messages=messages, bos_token="<|begin_of_text|>", add_generation_prompt=True)


def ids3(text):
    return tok3.encode(text, add_special_tokens=False).ids


sp = spm.SentencePieceProcessor(model_file=f"{models}/llama2/tokenizer.model")


def turn2(system, user, first):
    # Meta's llama chat_completion: the system block joins the first user message; content stripped.
    content = (f"<<SYS>>\n{system.strip()}\n<</SYS>>\n\n" if first and system else "") + user.strip()
    return [sp.bos_id()] + sp.encode(f"[INST] {content.strip()} [/INST]")


result = {"llama3": {"reference": f"tokenizers {tokenizers.__version__} + jinja2 {jinja2.__version__}"},
          "llama2": {"reference": f"sentencepiece {spm.__version__}"}}
for key in ("llama3", "llama2"):
    result[key]["cases"] = []
for c in cases:
    msgs = [{"role": "system", "content": c["system"]}] if c["system"] else []
    turns3, turns2 = [], []
    prev = []
    for i, user in enumerate(c["turns"]):
        msgs.append({"role": "user", "content": user})
        full = ids3(render3(msgs))
        assert full[:len(prev)] == prev
        turns3.append(full[len(prev):])
        turns2.append(turn2(c["system"], user, i == 0))
        if i + 1 < len(c["turns"]):
            reply = c["replies"][i]
            msgs.append({"role": "assistant", "content": reply})
            prev = full + ids3(reply) + ids3("<|eot_id|>")
    result["llama3"]["cases"].append({**c, "turn_ids": turns3})
    result["llama2"]["cases"].append({**c, "turn_ids": turns2})
json.dump(result, open(out, "w"), indent=1, ensure_ascii=False)
print("wrote", out)
