#!/usr/bin/env python3
"""Load generator for OpenAI-compatible servers (llama_server, llama.cpp's llama-server, vLLM).

`--concurrency` clients each send streamed /v1/completions requests back to back for `--requests` in
total: a prompt of `--prompt-len` tokens (random words; with --shared-prefix N the first N tokens are the
same for every request, to measure the prefix cache) and `--output-len` generated tokens (temperature
0, ignore_eos where the server knows it, so every request generates to max_tokens). Reports output
tokens/s over the whole run, time to first token p50/p99 and inter-token latency p50/p99 (the gaps
between streamed chunks, per token when a chunk carries several), and, to check that two servers got the
same load, the requests that generated fewer than --output-len tokens, the mean prompt length in the
server's own tokens and the tokens a streamed chunk carried (all from each response's usage).

Standard library only (urllib, threads): runs on a bare GPU machine.

    python3 tools/loadgen.py --url http://127.0.0.1:8080 --concurrency 64 --prompt-len 512 --output-len 256
"""
import argparse
import json
import random
import sys
import threading
import time
import urllib.request


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


WORDS = ("time dog cat tree house river stone light night story happy small big green blue red friend "
         "play run jump sing walk park ball book moon star sun rain wind snow bird fish boat road hill").split()


def make_prompt(rng, n_words, shared):
    return " ".join(shared + [rng.choice(WORDS) for _ in range(max(0, n_words - len(shared)))])


def one_request(url, model, prompt, output_len, timeout):
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": output_len, "temperature": 0,
                       "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    ttft, last, gaps, tokens, usage = None, None, [], 0, None
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"]
            if not ev.get("choices") or not ev["choices"][0].get("text"):
                continue
            now = time.perf_counter()
            if ttft is None:
                ttft = now - t0
            elif last is not None:
                gaps.append(now - last)
            last = now
            tokens += 1
    n_out = usage["completion_tokens"] if usage else tokens
    n_prompt = usage.get("prompt_tokens") if usage else None
    # A chunk may carry several tokens: spread its gap over them.
    if usage and tokens > 1 and n_out > tokens:
        per = (last - t0 - ttft) / max(1, n_out - 1)
        gaps = [per] * (n_out - 1)
    return ttft, gaps, n_out, n_prompt, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", default="default")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=0, help="total requests (default: 4 per client)")
    ap.add_argument("--prompt-len", type=int, default=512, help="prompt length in words (about one token each)")
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--shared-prefix", type=int, default=0, help="words of the prompt shared by every request")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    a = ap.parse_args()
    if a.concurrency < 1 or a.prompt_len < 1 or a.output_len < 1:
        sys.exit("loadgen: --concurrency, --prompt-len and --output-len must be positive")
    total = a.requests or 4 * a.concurrency
    rng = random.Random(a.seed)
    shared = [rng.choice(WORDS) for _ in range(min(a.shared_prefix, a.prompt_len))]
    prompts = [make_prompt(rng, a.prompt_len, shared) for _ in range(total)]
    lock = threading.Lock()
    queue = list(range(total))
    ttfts, itls, outs, errors = [], [], [0], []
    short, prompt_toks, chunks = [0], [], [0]

    def client():
        while True:
            with lock:
                if not queue:
                    return
                i = queue.pop()
            try:
                ttft, gaps, n, n_prompt, n_chunks = one_request(a.url, a.model, prompts[i], a.output_len, a.timeout)
                with lock:
                    ttfts.append(ttft)
                    itls.extend(gaps)
                    outs[0] += n
                    short[0] += n < a.output_len
                    chunks[0] += n_chunks
                    if n_prompt is not None:
                        prompt_toks.append(n_prompt)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(repr(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    res = {"concurrency": a.concurrency, "requests": total, "errors": len(errors), "prompt_len": a.prompt_len,
           "output_len": a.output_len, "shared_prefix": len(shared), "wall_s": round(wall, 2),
           "output_tok_s": round(outs[0] / wall, 1),
           "ttft_p50_ms": round(1e3 * percentile(ttfts, 50), 1), "ttft_p99_ms": round(1e3 * percentile(ttfts, 99), 1),
           "itl_p50_ms": round(1e3 * percentile(itls, 50), 2), "itl_p99_ms": round(1e3 * percentile(itls, 99), 2),
           "short": short[0], "prompt_tokens": round(sum(prompt_toks) / len(prompt_toks), 1) if prompt_toks else None,
           "tokens_per_chunk": round(outs[0] / chunks[0], 2) if chunks[0] else None}
    if a.json:
        print(json.dumps(res))
    else:
        print(f"concurrency {a.concurrency}: {total} requests ({len(errors)} failed) in {wall:.1f} s; "
              f"output {res['output_tok_s']} tok/s; TTFT p50 {res['ttft_p50_ms']} ms p99 {res['ttft_p99_ms']} ms; "
              f"ITL p50 {res['itl_p50_ms']} ms p99 {res['itl_p99_ms']} ms; {res['short']} short of {a.output_len} tokens; "
              f"prompt {res['prompt_tokens']} tokens; {res['tokens_per_chunk']} tokens a chunk")
    if errors:
        print("first error:", errors[0], file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
