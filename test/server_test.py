#!/usr/bin/env python3
"""llama_server through the `openai` client (PyPI), on loopback, on this machine's CPU.

storyteller (models/storyteller.bin): completions whole and streamed, stop strings, logprobs, 32
concurrent greedy requests each returning exactly what it returns alone, cancellation of a stream and
of non-streamed requests whose clients leave (their pages back at once), bad requests (400 with an OpenAI error body), a full queue (503 with
Retry-After), a bounded load test (clients for a fixed time: no request lost, the KV pages back to zero,
resident memory where it was). A tiny Llama-3-style model (test/chat_model.py; needs the Llama 3
tokenizer of MODELS_DIR): chat whole and streamed.
usage: server_test.py BIN_DIR SOURCE_DIR MODELS_DIR     (exit 77 = skipped: no openai package)
"""
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

try:
    import openai
except ImportError:
    print("SKIP: needs the openai package (pip install openai)")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
bin_dir, src_dir, models = sys.argv[1:4]
exe = os.path.join(bin_dir, "llama_server")
# KUIPER_SERVER_DEVICE=cuda runs the same tests against a server on the GPU (fp32 activations, so the
# batched-equals-alone checks compare the same arithmetic as on the CPU).
device = os.environ.get("KUIPER_SERVER_DEVICE", "cpu")
device_flags = ["--device", device] + (["--dtype", "fp32"] if device == "cuda" else [])
failures, passed = [], [0]


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"), flush=True)
    if not ok:
        failures.append(name)
    else:
        passed[0] += 1


class Server:
    def __init__(self, model, *flags):
        self.proc = subprocess.Popen([exe, "-m", model, *device_flags, "--port", "0", *flags],
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"llama_server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{m.group(1)}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=60)
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def metrics(self):
        text = urllib.request.urlopen(self.url + "/metrics", timeout=10).read().decode()
        return {k: float(v) for k, v in re.findall(r"^(llama_[a-z_]+) ([0-9.e+-]+)$", text, re.M)}

    def post(self, path, body):
        data = body if isinstance(body, bytes) else body.encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            r = urllib.request.urlopen(req, timeout=30)
            return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def rss_kib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def wait_pages_free(self, seconds=5):
        end = time.time() + seconds
        m = self.metrics()
        while time.time() < end and (m["llama_kv_pages_used"] or m["llama_requests_running"] or m["llama_requests_waiting"]):
            time.sleep(0.05)
            m = self.metrics()
        return m

    def stop(self):
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


PROMPTS = ["Once upon a time", "The little dog", "One day, a girl named Lily", "Tom and his friend",
           "In a big forest", "The sun was", "A cat sat", "Mom said"]


def storyteller_tests():
    s = Server(os.path.join(src_dir, "models", "storyteller.bin"), "-np", "32", "--max_waiting", "64")
    c = s.client
    try:
        r = c.completions.create(model="x", prompt="Once upon a time", max_tokens=24, temperature=0)
        text = r.choices[0].text
        check("completion", len(text) > 0 and r.usage.completion_tokens == 24 and r.choices[0].finish_reason == "length",
              repr(r))
        pieces = [ch.choices[0].text for ch in c.completions.create(model="x", prompt="Once upon a time", max_tokens=24,
                                                                    temperature=0, stream=True) if ch.choices]
        check("streamed completion equals the whole one", "".join(pieces) == text, f"{pieces!r} vs {text!r}")
        words = text.split()
        stop = words[3] if len(words) > 3 else words[-1]
        r2 = c.completions.create(model="x", prompt="Once upon a time", max_tokens=24, temperature=0, stop=[stop])
        check("stop string ends the text before it", r2.choices[0].text == text[:text.index(stop)] and
              r2.choices[0].finish_reason == "stop", f"{r2.choices[0].text!r} stop {stop!r} in {text!r}")
        r3 = c.completions.create(model="x", prompt="The little dog", max_tokens=5, temperature=0, logprobs=1)
        lp = r3.choices[0].logprobs.token_logprobs
        check("logprobs", len(lp) == 5 and all(v <= 0 for v in lp), repr(r3.choices[0].logprobs))
        r4 = c.completions.create(model="x", prompt="The little dog", max_tokens=16, temperature=0.9, seed=7)
        r5 = c.completions.create(model="x", prompt="The little dog", max_tokens=16, temperature=0.9, seed=7)
        check("a seed repeats a sampled completion", r4.choices[0].text == r5.choices[0].text)

        # 32 concurrent greedy requests, each against itself alone.
        reqs = [(PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)), 20 + i % 13) for i in range(32)]
        alone = [c.completions.create(model="x", prompt=p, max_tokens=n, temperature=0).choices[0].text for p, n in reqs]
        got = [None] * 32

        def one(i):
            p, n = reqs[i]
            got[i] = c.completions.create(model="x", prompt=p, max_tokens=n, temperature=0).choices[0].text

        threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
        before = s.metrics()["llama_engine_steps_total"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        steps = s.metrics()["llama_engine_steps_total"] - before
        bad = [i for i in range(32) if got[i] != alone[i]]
        check("32 concurrent greedy requests return what each returns alone", not bad,
              f"differ: {bad[:5]} e.g. {got[bad[0]]!r} vs {alone[bad[0]]!r}" if bad else "")
        # Batched: far fewer steps than tokens (the clients' threads start at slightly different times).
        check("the 32 were batched", steps < 0.75 * sum(n for _, n in reqs), f"{steps} steps")
        m = s.wait_pages_free()
        check("page accounting back to zero", m["llama_kv_pages_used"] == 0, repr(m))
        long_prompt = "Once upon a time, there was a little girl named Lily. She loved to play in the park with her dog."
        first = c.completions.create(model="x", prompt=long_prompt, max_tokens=4, temperature=0)
        again = c.completions.create(model="x", prompt=long_prompt, max_tokens=4, temperature=0)
        cached = again.usage.prompt_tokens_details.cached_tokens
        check("a repeated prompt's full pages come from the prefix cache",
              cached >= 16 and cached % 16 == 0 and cached < again.usage.prompt_tokens and
              again.choices[0].text == first.choices[0].text, repr(again.usage))

        # Cancellation: a stream dropped after two chunks.
        stream = c.completions.create(model="x", prompt="Once upon a time", max_tokens=400, temperature=0, stream=True)
        it = iter(stream)
        next(it), next(it)
        stream.close()
        m = s.wait_pages_free()
        check("a dropped stream is cancelled and its pages freed",
              m["llama_kv_pages_used"] == 0 and m["llama_requests_running"] == 0 and
              m["llama_generation_tokens_total"] < 100000, repr(m))

        # A non-streamed reply that takes longer than 100 ms is written as it goes (spaces, then the JSON):
        # it parses as a whole reply. Its clients leaving cancels such requests too (the spaces fail to write).
        long_body = json.dumps({"prompt": "Once upon a time", "max_tokens": 480, "ignore_eos": True, "temperature": 0})
        code, headers, text = s.post("/v1/completions", long_body)
        whole = json.loads(text) if code == 200 else {}
        check("a long non-streamed reply is one JSON body with every token",
              whole.get("usage", {}).get("completion_tokens") == 480 and whole["choices"][0]["finish_reason"] == "length",
              f"{code} {text[:200]!r}")

        def leave():
            conn = http.client.HTTPConnection(s.url.split("//")[1], timeout=10)
            conn.request("POST", "/v1/completions", body=long_body, headers={"Content-Type": "application/json"})
            conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()

        before = s.metrics()["llama_generation_tokens_total"]
        leavers = [threading.Thread(target=leave) for _ in range(8)]
        for t in leavers:
            t.start()
        for t in leavers:
            t.join()
        time.sleep(0.2)  # admitted and generating
        m = s.wait_pages_free()
        generated = m["llama_generation_tokens_total"] - before
        check("non-streamed requests whose clients left are cancelled and their pages freed",
              m["llama_kv_pages_used"] == 0 and m["llama_requests_running"] == 0 and generated < 0.8 * 8 * 480,
              f"{generated:.0f} of {8 * 480} tokens generated; {m!r}")

        # Bad requests: 400 with an OpenAI error body; the server stays up.
        cases = {"malformed JSON": "{bad", "not an object": "[1]", "negative max_tokens": '{"prompt":"a","max_tokens":-1}',
                 "wrong type": '{"prompt":"a","temperature":"hot"}', "n = 2": '{"prompt":"a","n":2}',
                 "no prompt": '{"max_tokens":3}', "over the context": json.dumps({"prompt": "a b " * 600}),
                 "bad token id": '{"prompt":[1, 99999]}', "bad utf-8": b'{"prompt":"\xff\xfe"}'}
        for name, body in cases.items():
            code, _, text = s.post("/v1/completions", body)
            ok = code == 400
            try:
                ok = ok and "message" in json.loads(text)["error"]
            except ValueError:
                ok = False
            check(f"400: {name}", ok, f"{code} {text[:200]}")
        try:
            c.completions.create(model="x", prompt="a", max_tokens=-5)
            check("the client sees a BadRequestError", False)
        except openai.BadRequestError:
            check("the client sees a BadRequestError", True)
        code, _, _ = s.post("/nowhere", "{}")
        check("404 for an unknown path", code == 404)
        check("still healthy", urllib.request.urlopen(s.url + "/health", timeout=5).status == 200)
        models = c.models.list()
        check("/v1/models", len(models.data) == 1 and models.data[0].id == "storyteller.bin", repr(models))

        # Load: 12 clients for 4 seconds (after 1 s of the same to warm the threads and the allocator up);
        # nothing lost; pages and memory back where they were.
        done, errors, stop_at = [0], [], [time.time() + 1]

        def client(k):
            i = 0
            while time.time() < stop_at[0]:
                p = PROMPTS[(k + i) % len(PROMPTS)]
                try:
                    if i % 3 == 0:
                        n = sum(1 for _ in c.completions.create(model="x", prompt=p, max_tokens=12, stream=True))
                        ok = n > 0
                    else:
                        ok = c.completions.create(model="x", prompt=p, max_tokens=8 + i % 9).usage.completion_tokens > 0
                    done[0] += ok
                    if not ok:
                        errors.append("empty")
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))
                i += 1

        # Memory: the first rounds grow the allocator's per-thread arenas; a leak would keep growing,
        # so the check is that a second round of load ends where the first ended.
        rss, heap = [], []
        for phase in ("warm-up", "load", "load again"):
            if phase != "warm-up":
                heap.append(s.wait_pages_free().get("llama_heap_bytes_in_use", -1) // 1024)
                rss.append(s.rss_kib())
                stop_at[0] = time.time() + 3
            ts = [threading.Thread(target=client, args=(k,)) for k in range(12)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        m = s.wait_pages_free()
        rss.append(s.rss_kib())
        heap.append(m.get("llama_heap_bytes_in_use", -1) // 1024)
        rss0, rss1 = rss[1], rss[2]
        check("load: no request lost", not errors and done[0] > 12, f"{done[0]} done, errors {errors[:3]}")
        check("load: pages back to zero", m["llama_kv_pages_used"] == 0 and m["llama_requests_running"] == 0, repr(m))
        # Memory: the C heap in use (glibc's count of allocated bytes, /metrics) must end the second round
        # where the first ended, within 1 MiB for hundreds of requests (a leak of the ~35 KiB a request that
        # the RSS grows by would be tens of MiB). The RSS itself is printed, not checked: it also holds what
        # the allocator keeps after frees and the HTTP threads' stacks (measured: the heap in use stays flat
        # while the RSS grows, with MALLOC_ARENA_MAX=1 too).
        heap0, heap1 = heap[1], heap[2]
        if heap0 > 0:
            check("load: heap in use back where it was (within 1 MiB)", heap1 - heap0 < 1024,
                  f"heap in use {heap} KiB over {done[0]} requests")
        else:  # a sanitizer's allocator answers mallinfo2 with zeros; LeakSanitizer checks at exit there
            print(f"NOTE load: heap in use not measurable with this allocator ({heap}); not checked here")
        print(f"NOTE load: RSS grew {rss1 - rss0} KiB over the second round (not a held allocation: see the heap check)")
        print(f"     load: {done[0]} requests in 7 s, RSS {rss} KiB (before, after the first, after the second round)")
        print(f"     load: C heap in use {heap} KiB (the same three points)")
    finally:
        check("storyteller server exits cleanly on SIGTERM", s.stop() == 0)


def busy_test():
    # One slot and one waiting place: of 6 requests at once, some are refused with 503 + Retry-After.
    s = Server(os.path.join(src_dir, "models", "storyteller.bin"), "-np", "1", "--max_waiting", "1")
    try:
        codes, retry = [], []

        def one():
            code, headers, _ = s.post("/v1/completions", '{"prompt":"Once upon a time","max_tokens":200,"temperature":0}')
            codes.append(code)
            if code == 503:
                retry.append(headers.get("Retry-After"))

        ts = [threading.Thread(target=one) for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        check("full queue: 503 with Retry-After, the rest served", 503 in codes and 200 in codes and
              set(codes) <= {200, 503} and all(r == "1" for r in retry), repr(codes))
    finally:
        s.stop()


def chat_tests():
    if not os.path.isdir(os.path.join(models, "llama3")):
        print(f"SKIP chat: needs {models}/llama3 (the Llama 3 tokenizer)")
        return False
    from chat_model import export_chat_model
    with tempfile.TemporaryDirectory() as tmp:
        model = export_chat_model(tmp, src_dir, models)
        s = Server(model, "-np", "4")
        try:
            msgs = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Hello!"}]
            r = s.client.chat.completions.create(model="x", messages=msgs, max_tokens=8, temperature=0)
            text = r.choices[0].message.content
            check("chat completion", r.choices[0].message.role == "assistant" and r.usage.completion_tokens > 0, repr(r))
            chunks = list(s.client.chat.completions.create(model="x", messages=msgs, max_tokens=8, temperature=0,
                                                           stream=True, stream_options={"include_usage": True}))
            streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            check("streamed chat equals the whole one", streamed == text, f"{streamed!r} vs {text!r}")
            check("stream usage chunk", chunks[-1].usage is not None and chunks[-1].usage.completion_tokens ==
                  r.usage.completion_tokens, repr(chunks[-1]))
            turns = msgs + [{"role": "assistant", "content": text}, {"role": "user", "content": "And then?"}]
            r2 = s.client.chat.completions.create(model="x", messages=turns, max_tokens=4, temperature=0)
            check("multi-turn chat", r2.usage.prompt_tokens > r.usage.prompt_tokens, repr(r2.usage))
            code, _, body = s.post("/v1/chat/completions", '{"messages":[{"role":"assistant","content":"hi"}]}')
            check("chat: 400 for a conversation not ending with the user", code == 400, body)
        finally:
            s.stop()
    return True


t0 = time.time()
storyteller_tests()
busy_test()
chat_ran = chat_tests()
print(f"server tests: {time.time() - t0:.1f} s")
print(f"{passed[0]} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
