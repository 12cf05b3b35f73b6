#!/usr/bin/env python3
"""Train models/storyteller.bin, llama_infer's default model: a tiny Llama that writes children's
stories, trained from scratch on text from our own grammar (tools/story_grammar.py).

    python3 tools/train_default_model.py                  # all steps; training needs a CUDA GPU
    python3 tools/train_default_model.py --data-only      # steps 1-3 only (no torch needed)

Steps, each cached in --work (default build-storyteller/, so a rerun skips what is done):
  1. corpus.txt   --mb MB of stories from story_grammar.py with --seed
  2. tok.model    SentencePiece BPE, --vocab pieces, with Llama 2's settings: byte fallback, the
                  dummy prefix, unk 0 / bos 1 / eos 2, no pad, identity normalization
  3. tokens.npy   every story as BOS, pieces, EOS, concatenated (uint16); the last 1% is held out
  4. training     transformers' LlamaForCausalLM (so the weights are in Hugging Face's layout,
                  which tools/export.py --hf reads), bf16 autocast, AdamW, warmup + cosine
  5. hf/          save_pretrained (fp32) + tokenizer.model, and greedy.json: the fp32 CPU greedy
                  continuation of GREEDY_PROMPT, the reference our engine must reproduce exactly
  6. export       tools/export.py --hf work/hf --dtype fp16 -> --out (models/storyteller.bin)

Needs numpy and sentencepiece; steps 4-6 also torch and transformers (written for torch 2.11,
transformers 5.x). Everything is seeded; the GPU step is deterministic up to cuBLAS/SDPA
reduction order, so a rerun gives a model of the same quality, not bitwise the same weights.
"""

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time

import numpy as np
import sentencepiece as spm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import story_grammar  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOS, EOS = 1, 2
GREEDY_PROMPT = "Once upon a time"
GREEDY_TOKENS = 200

# 3.3M parameters (tied embeddings): 6.7 MB as an fp16 export. head_dim 32, 3 query heads per
# kv head, hidden 512 = 2.67 x dim, like Llama's 8/3 ratio.
MODEL = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=8, num_attention_heads=6,
             num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
             hidden_act="silu", attention_bias=False, mlp_bias=False, bos_token_id=BOS, eos_token_id=EOS)


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------
# Steps 1-3: corpus, tokenizer, token ids (CPU, no torch)
# ------------------------------------------------------------------------------------------------

def make_data(args) -> np.ndarray:
    os.makedirs(args.work, exist_ok=True)
    stamp = {"seed": args.seed, "mb": args.mb, "vocab": args.vocab}
    stamp_path = os.path.join(args.work, "data.json")
    tok_path = os.path.join(args.work, "tok.model")
    ids_path = os.path.join(args.work, "tokens.npy")
    if os.path.exists(stamp_path) and os.path.exists(tok_path) and os.path.exists(ids_path):
        with open(stamp_path) as f:
            if json.load(f) == stamp:
                log(f"data: reusing {tok_path} and {ids_path}")
                return np.load(ids_path)

    t0 = time.time()
    corpus = os.path.join(args.work, "corpus.txt")
    stories = list(story_grammar.generate(args.seed, int(args.mb * 1e6)))
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n\n".join(stories) + "\n")
    log(f"data: {len(stories)} stories, {os.path.getsize(corpus) / 1e6:.1f} MB -> {corpus} ({time.time() - t0:.0f} s)")

    # Trained on paragraphs (the file's lines), so a newline is never a piece: it is encoded as the
    # byte-fallback piece <0x0A>, as in Llama 2 and llama2.c's TinyStories tokenizers.
    t0 = time.time()
    spm.set_random_generator_seed(args.seed)
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(args.work, "tok"), model_type="bpe", vocab_size=args.vocab,
        character_coverage=1.0, byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        unk_id=0, bos_id=BOS, eos_id=EOS, pad_id=-1, input_sentence_size=400000, shuffle_input_sentence=True,
        max_sentence_length=4192, num_threads=os.cpu_count() or 1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=tok_path)
    log(f"data: tokenizer {tok_path}, {sp.get_piece_size()} pieces ({time.time() - t0:.0f} s)")

    t0 = time.time()
    pieces = sp.encode(stories, add_bos=True, add_eos=True, num_threads=os.cpu_count() or 1)
    ids = np.fromiter((t for p in pieces for t in p), dtype=np.uint16)
    np.save(ids_path, ids)
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
    n_chars = sum(len(s) for s in stories)
    log(f"data: {len(ids) / 1e6:.2f}M tokens, {n_chars / len(ids):.2f} characters per token -> {ids_path} "
        f"({time.time() - t0:.0f} s)")
    return ids


# ------------------------------------------------------------------------------------------------
# Steps 4-5: training and the greedy reference (torch)
# ------------------------------------------------------------------------------------------------

def train(args, ids: np.ndarray):
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True

    config = LlamaConfig(vocab_size=args.vocab, **MODEL)
    model = LlamaForCausalLM(config).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters, {json.dumps({k: v for k, v in MODEL.items() if 'bias' not in k})}")

    n_val = len(ids) // 100
    data = torch.from_numpy(ids.astype(np.int64)).to(dev)
    train_data, val_data = data[:-n_val], data[-n_val:]
    T, B = args.seq_len, args.batch
    offs = torch.arange(T + 1, device=dev)
    gen = torch.Generator(device=dev).manual_seed(args.seed)

    def batch(src, g):
        start = torch.randint(0, len(src) - T - 1, (B,), device=dev, generator=g)
        xy = src[start[:, None] + offs]
        return xy[:, :-1], xy[:, 1:]

    def loss_of(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x, use_cache=False).logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))

    @torch.no_grad()
    def val_loss():
        model.eval()
        g = torch.Generator(device=dev).manual_seed(args.seed + 1)  # the same 16 batches every time
        out = torch.stack([loss_of(*batch(val_data, g)) for _ in range(16)]).mean().item()
        model.train()
        return out

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=True)

    def lr_at(step):  # linear warmup, then cosine down to 10% of the peak
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    log(f"train: {args.steps} steps of {B} x {T} tokens, lr {args.lr}, {len(train_data) / 1e6:.2f}M train tokens")
    t0 = time.time()
    running = torch.zeros((), device=dev)
    step = 0
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = loss_of(*batch(train_data, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.detach()
        if (step + 1) % args.log_every == 0:
            elapsed = time.time() - t0
            msg = (f"step {step + 1:5d}  loss {running.item() / args.log_every:.4f}  lr {lr_at(step):.2e}  "
                   f"{elapsed:.0f} s  {(step + 1) * B * T / elapsed / 1e6:.2f}M tok/s")
            if (step + 1) % (args.log_every * 5) == 0:
                msg += f"  val {val_loss():.4f}"
            log(msg)
            running.zero_()
            if args.time_limit and elapsed > args.time_limit:
                log(f"train: stopping at step {step + 1}: past --time_limit {args.time_limit} s")
                break
    final = val_loss()
    log(f"train: done, {step + 1} steps in {time.time() - t0:.0f} s, final val loss {final:.4f}")
    return model, {"steps": step + 1, "val_loss": round(final, 4), "params": n_params}


def save_and_reference(args, model, stats: dict) -> str:
    import shutil

    import torch

    hf_dir = os.path.join(args.work, "hf")
    model = model.float().cpu().eval()
    model.save_pretrained(hf_dir)
    shutil.copy(os.path.join(args.work, "tok.model"), os.path.join(hf_dir, "tokenizer.model"))

    # Greedy reference on the CPU in fp32 (no TF32, no bf16): what the engine's fp32 path computes.
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.work, "tok.model"))
    prompt = [BOS] + sp.encode(GREEDY_PROMPT)
    ids, gaps = list(prompt), []
    with torch.no_grad():
        for _ in range(GREEDY_TOKENS):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
            top = torch.topk(logits, 2).values
            gaps.append(float(top[0] - top[1]))
            ids.append(int(torch.argmax(logits)))
            if ids[-1] == EOS:
                break
    ref = {"prompt": GREEDY_PROMPT, "prompt_ids": prompt, "generated_ids": ids[len(prompt):],
           "min_top2_gap": min(gaps), "text": sp.decode(ids[1:]), **stats}
    with open(os.path.join(args.work, "greedy.json"), "w") as f:
        json.dump(ref, f, indent=1)
    log(f"greedy ({len(ids) - len(prompt)} tokens, smallest top-1/top-2 logit gap {min(gaps):.3f}):\n{ref['text']}")
    return hf_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.path.join(ROOT, "build-storyteller"), help="cache folder")
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "storyteller.bin"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mb", type=float, default=30.0, help="corpus size in MB")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq_len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--log_every", type=int, default=250)
    ap.add_argument("--time_limit", type=float, default=0, help="stop training after this many seconds (0: none)")
    ap.add_argument("--data-only", action="store_true", help="stop after the token ids (no torch needed)")
    args = ap.parse_args(argv)

    ids = make_data(args)
    if args.data_only:
        return 0
    model, stats = train(args, ids)
    hf_dir = save_and_reference(args, model, stats)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    cmd = [sys.executable, os.path.join(ROOT, "tools", "export.py"), "--hf", hf_dir, "--tokenizer",
           os.path.join(args.work, "tok.model"), "--dtype", "fp16", "--quiet", args.out]
    log("export: " + " ".join(cmd))
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
