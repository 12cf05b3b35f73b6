#!/usr/bin/env python3
"""Make tiny random Hugging Face Llama models and the outputs transformers computes for them.

Needs torch and transformers (written for torch 2.11, transformers 5.x; the GPU test machine has
them, the build machine does not). For each model in FIXTURES it writes test/fixtures/hf/<name>/:
  config.json, generation_config.json, model.safetensors   (save_pretrained, fp32)
  expected.json  the fed token ids, HF's float32 logits at every fed position, a greedy
                 continuation, and the smallest top-1/top-2 logit gap (how close to a tie).
No tokenizer is stored (third-party files stay out of the repo): every model has vocab 512 and
uses bos 1 / eos 2, so the test harness passes ../shared/models/stories260K/tok512.model to
tools/export.py with --tokenizer, or any 512-token tokenizer.

    python3 tools/make_hf_fixtures.py [--out test/fixtures/hf] [--device cpu]

Runs on CPU in a few seconds (the default: fp32 on CPU has no TF32 and is deterministic).
"""

import argparse
import inspect
import json
import math
import os
import shutil
import sys

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

SEED = 1234
# Fixed prompt: BOS then 11 ids spread over the vocabulary (all < 512).
INPUT_IDS = [1, 37, 401, 89, 260, 15, 311, 452, 7, 198, 333, 64]
N_GENERATE = 16

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

# With head_dim 16 and theta 500000 the RoPE wavelengths are 6.3, 32, 167, 860, ... positions;
# original_max_position_embeddings 64 with low/high factors 1/4 puts the limits at 64 and 16, so
# pair 0 is kept, pair 1 is in the smoothed band and pairs 2+ are divided by `factor`: every
# branch of the llama3 rule is exercised even at the fixture's 28 positions.
FIXTURES = {
    # Llama 2 style: multi-head attention, untied classifier, theta 10000.
    "llama2_mha": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                       tie_word_embeddings=False),
    # Llama 3 / 3.1 style: grouped-query attention (4 query heads per kv head), llama3 rope scaling.
    "llama3_gqa": dict(hidden_size=128, intermediate_size=192, num_hidden_layers=2, num_attention_heads=8,
                       num_key_value_heads=2, rope_parameters=dict(LLAMA3_ROPE), tie_word_embeddings=False),
    # Llama 3.2 style: tied embeddings, GQA, llama3 scaling with factor 32 as in Llama 3.2.
    "llama32_tied": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, rope_parameters=dict(LLAMA3_ROPE, factor=32.0),
                         tie_word_embeddings=True),
    # Odd sizes: widths that are not powers of two, 3 layers, 3 query heads per kv head.
    "odd_sizes": dict(hidden_size=96, intermediate_size=200, num_hidden_layers=3, num_attention_heads=6,
                      num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                      tie_word_embeddings=False),
}
# Embedding std per fixture (default 1, nn.Embedding's). With tied embeddings the classifier is
# norm(h) . E: at std 1 the current token's own embedding dominates h and greedy decoding just
# repeats the last token; at 0.2 the layers' contributions (RMS ~1 each) dominate instead.
EMBED_STD = {"llama32_tied": 0.2}
COMMON = dict(vocab_size=512, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
              hidden_act="silu", attention_bias=False, mlp_bias=False)


def init_weights(model: torch.nn.Module, seed: int, embed_std: float) -> None:
    """Deterministic init with a realistic scale. HF's default (std 0.02) gives near-flat logits and
    near-ties under greedy decoding; here every linear has std gain/sqrt(in_features), so each
    layer roughly preserves the RMS of its input, attention is far from uniform, and logits have a
    spread of a few units. Norm weights are 1 + noise so that a missing or misplaced norm shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # named_parameters() lists a tied lm_head once, under embed_tokens.
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                value = 1.0 + 0.2 * noise
            elif "embed_tokens" in name:
                value = noise * embed_std
            elif "lm_head" in name:
                value = noise * (4.0 / math.sqrt(p.shape[1]))
            else:
                value = noise * (1.2 / math.sqrt(p.shape[1]))
            p.copy_(value.to(p.device))


def top2_gap(logits: torch.Tensor) -> torch.Tensor:
    """top-1 minus top-2 logit, per row of [n, vocab]."""
    top = torch.topk(logits, 2, dim=-1).values
    return top[..., 0] - top[..., 1]


def greedy_with_cache(model, ids: torch.Tensor, n: int):
    """Prefill once, then feed one token at a time through the KV cache, taking the argmax."""
    out = model(input_ids=ids, use_cache=True)
    past, last = out.past_key_values, out.logits[0, -1]
    generated, gaps = [], []
    for step in range(n):
        nxt = int(torch.argmax(last))
        generated.append(nxt)
        gaps.append(float(top2_gap(last[None])[0]))
        if step + 1 < n:
            out = model(input_ids=torch.tensor([[nxt]], device=ids.device), past_key_values=past, use_cache=True)
            past, last = out.past_key_values, out.logits[0, -1]
    return generated, gaps


def save(model, folder: str) -> None:
    # transformers 5 always writes safetensors and dropped the safe_serialization argument.
    kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True
    model.save_pretrained(folder, **kwargs)


def f32(x) -> float:
    """A float32 as the shortest decimal that reads back to the same float32."""
    return float(f"{float(x):.9g}")


def make_one(name: str, spec: dict, out_dir: str, device: str) -> dict:
    torch.manual_seed(SEED)
    config = LlamaConfig(**COMMON, **spec)
    model = LlamaForCausalLM(config).to(device=device, dtype=torch.float32).eval()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")  # plain softmax(QK^T)V in fp32, no fused kernels
    init_weights(model, SEED + sum(map(ord, name)), EMBED_STD.get(name, 1.0))

    ids = torch.tensor([INPUT_IDS], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0].float()  # [12, vocab]
        generated, gen_gaps = greedy_with_cache(model, ids, N_GENERATE)
        # The same continuation from one uncached forward over prompt + generated: checks the
        # cache path and that the recorded argmaxes are not fragile.
        full = model(input_ids=torch.tensor([INPUT_IDS + generated[:-1]], device=device), use_cache=False)
        full_logits = full.logits[0].float()
        recheck = torch.argmax(full_logits[len(INPUT_IDS) - 1:], dim=-1).tolist()
    if recheck != generated:
        raise RuntimeError(f"{name}: cached and uncached greedy decoding disagree: {generated} vs {recheck}")

    folder = os.path.join(out_dir, name)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    save(model, folder)

    # Reload what was saved and run it again: the files on disk must reproduce the logits.
    reloaded = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    if hasattr(reloaded, "set_attn_implementation"):
        reloaded.set_attn_implementation("eager")
    with torch.no_grad():
        again = reloaded(input_ids=ids, use_cache=False).logits[0].float()
    if not torch.equal(again, logits):
        raise RuntimeError(f"{name}: the saved model does not reproduce its logits "
                           f"(max diff {(again - logits).abs().max().item():.3g})")

    prompt_gap = float(top2_gap(logits).min())
    expected = {
        "name": name,
        "generator": "tools/make_hf_fixtures.py",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "device": device, "dtype": "float32", "attn_implementation": "eager", "seed": SEED,
        "config": {**COMMON, **spec},
        "init": {"embed_std": EMBED_STD.get(name, 1.0), "linear_std": "1.2/sqrt(in_features)",
                 "lm_head_std": "4/sqrt(hidden_size)", "norm_weight": "1 + 0.2 N(0,1)"},
        "input_ids": INPUT_IDS,
        "logits_shape": list(logits.shape),
        "logits": [[f32(v) for v in row] for row in logits.cpu().tolist()],
        "greedy_method": "manual argmax loop with the KV cache (prefill the prompt, then one token a step); "
                         "re-checked by argmax of one uncached forward over prompt + generated",
        "greedy_ids": generated,
        # top-1 minus top-2 logit: a C++ implementation at fp32 differs from HF by ~1e-5, so a
        # gap well above that means the argmax is robust; fp16/bf16/int8 exports need more.
        "min_top2_gap_prompt": f32(prompt_gap),
        "min_top2_gap_generated": f32(min(gen_gaps)),
        "min_top2_gap": f32(min(prompt_gap, min(gen_gaps))),
        "max_abs_logit": f32(logits.abs().max()),
    }
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{name:<13} {n_params:>8} params {size / 1e6:5.2f} MB  greedy {generated}  "
          f"min top-2 gap {expected['min_top2_gap']:.3f}  files {sorted(os.listdir(folder))}")
    return {"name": name, "bytes": size}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test",
                                                 "fixtures", "hf"))
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = ap.parse_args()
    if args.device.startswith("cuda"):
        # fp32 logits must not come from TF32 matmuls.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    os.makedirs(args.out, exist_ok=True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {args.device}")
    made = [make_one(name, spec, args.out, args.device) for name, spec in FIXTURES.items()]
    total = sum(m["bytes"] for m in made)
    print(f"{len(made)} fixtures in {os.path.normpath(args.out)}, {total / 1e6:.2f} MB in all")
    if total > 5e6:
        print("warning: fixtures exceed the 5 MB budget", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
