"""A tiny Llama-3-style chat model for the chat tests: random weights, the real Llama 3 tokenizer, written
as a Hugging Face folder with numpy and exported with tools/export.py."""
import json
import os
import struct
import subprocess
import sys

import numpy as np


def write_hf_model(folder, max_positions=256):
    """Llama-3-shaped: GQA, rope theta 500000, tied embeddings, 128256 tokens; 1 layer, width 32."""
    V, D, F, H, KV, hd = 128256, 32, 64, 4, 2, 8
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D,
           "intermediate_size": F, "num_hidden_layers": 1, "num_attention_heads": H,
           "num_key_value_heads": KV, "head_dim": hd, "vocab_size": V, "max_position_embeddings": max_positions,
           "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True, "hidden_act": "silu",
           "bos_token_id": 128000, "eos_token_id": [128001, 128009]}
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    rng = np.random.default_rng(0)
    t = {"model.embed_tokens.weight": rng.normal(0, 0.5, (V, D)),
         "model.norm.weight": np.ones(D),
         "model.layers.0.input_layernorm.weight": np.ones(D),
         "model.layers.0.post_attention_layernorm.weight": np.ones(D),
         "model.layers.0.self_attn.q_proj.weight": rng.normal(0, 0.3, (H * hd, D)),
         "model.layers.0.self_attn.k_proj.weight": rng.normal(0, 0.3, (KV * hd, D)),
         "model.layers.0.self_attn.v_proj.weight": rng.normal(0, 0.3, (KV * hd, D)),
         "model.layers.0.self_attn.o_proj.weight": rng.normal(0, 0.3, (D, H * hd)),
         "model.layers.0.mlp.gate_proj.weight": rng.normal(0, 0.3, (F, D)),
         "model.layers.0.mlp.up_proj.weight": rng.normal(0, 0.3, (F, D)),
         "model.layers.0.mlp.down_proj.weight": rng.normal(0, 0.3, (D, F))}
    header, blobs, at = {}, [], 0
    for name, a in t.items():
        b = a.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    h = json.dumps(header).encode()
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def export_chat_model(folder, src_dir, models, max_positions=256):
    """Writes the Hugging Face folder into `folder` and returns the path of its fp16 export."""
    write_hf_model(folder, max_positions)
    model = os.path.join(folder, "chat3.bin")
    subprocess.run([sys.executable, os.path.join(src_dir, "tools", "export.py"), "-q", "--hf", folder, "--tokenizer",
                    os.path.join(models, "llama3", "tokenizer.model"), "--dtype", "fp16", model], check=True)
    return model
