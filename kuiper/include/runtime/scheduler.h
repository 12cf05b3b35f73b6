// Scheduler: continuous batching over the paged KV cache.
//
// Requests join and leave the running batch at every step. One step:
//   1. take in what other threads handed over: new requests (to the waiting queue, bounded: submit()
//      refuses past max_waiting) and cancellations (their pages are released now);
//   2. the running sequences, oldest first: each adds its next token (decode) or its next prefill
//      chunk, within the step's token budget, and gets the pages its new positions need. When no
//      page is left the newest running sequence is preempted: its pages are released and it goes back
//      to the front of the queue, to be recomputed later (its pages are probably still in the prefix
//      cache then, so "recomputed" is mostly a lookup). The oldest sequence always fits alone, so
//      something always progresses;
//   3. waiting requests are admitted, first come first served, while there is a free sequence slot,
//      budget and pages: first the longest prefix of full pages already in the prefix cache is taken
//      (model/page_allocator.h), then the rest of the prompt is prefilled in chunks;
//   4. the model runs the batch (one step: decode rows and prefill chunks together); each sequence
//      whose chunk reached its last token samples its next token; pages that became full are
//      published to the prefix cache; finished sequences release their pages (they stay cached).
//
//   waiting queue ──admit──▶ running (≤ max_seqs) ──step──▶ tokens ──▶ on_token (the server's stream)
//        ▲                      │ no page left: the newest is preempted (pages freed, recomputed later)
//        └──────────────────────┘
//
// The scheduler is driven by one thread (serve(), or step() in tests); submit(), cancel() and stats()
// may be called from any thread. The callbacks run on the driving thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/status.h"
#include "model/batch.h"
#include "model/page_allocator.h"
#include "sampler/sampler.h"

namespace runtime {

struct SchedulerOptions {
  int32_t max_seqs = 8;        // sequences running at once (the rows of a decode step)
  int32_t token_budget = 256;  // tokens of one step, decode rows and prefill chunks together
  int32_t max_waiting = 64;    // queued requests beyond which submit() refuses (the server's 503)
  int32_t max_seq_len = 0;     // positions of one sequence
  int32_t vocab_size = 0;
  bool prefix_cache = true;    // look up full prompt pages already computed
};

// How a request ended.
struct Finish {
  std::string reason;        // "stop" (end of text or a stop), "length", "cancelled", "error"
  base::Status error;        // for "error"
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int32_t cached_tokens = 0;  // prompt tokens found in the prefix cache (at the first admission)
};

struct Request {
  std::vector<int32_t> prompt;       // token ids (BOS included when wanted)
  int32_t max_tokens = 16;           // new tokens at most
  sampler::SamplerConfig sampling;   // temperature 0: greedy (the argmax computed on the device)
  bool logprobs = false;             // pass the chosen token's log-probability to on_token
  std::vector<int32_t> stop_ids;     // tokens that end the sequence (not passed on): end of text, of turn
  // Each new token, on the driving thread; return false to end the sequence ("stop": a stop string).
  std::function<bool(int32_t token, float logprob)> on_token;
  // Once, at the end; after it the request's callbacks are never called again.
  std::function<void(const Finish&)> on_finish;
};

struct SchedulerStats {
  int32_t running = 0, waiting = 0;
  int32_t pages_total = 0, pages_used = 0, pages_cached = 0, pages_free = 0;
  int64_t prompt_tokens = 0;       // prompt tokens of admitted requests (first admission)
  int64_t prefilled_tokens = 0;    // tokens run through the model as prefill (recomputation included)
  int64_t generated_tokens = 0;    // tokens passed to on_token
  int64_t prefix_hit_tokens = 0;   // prompt tokens taken from the prefix cache
  int64_t preemptions = 0;
  int64_t steps = 0;
  int64_t finished = 0, cancelled = 0, refused = 0;
};

// One model step (LlamaModel::step or TpRunner::step).
using ModelStepFn = std::function<base::Status(const model::BatchSeq*, int32_t, const model::StepOutput&)>;

class Scheduler {
 public:
  // `pages` is the cache's allocator (rank 0's with tensor parallelism); the scheduler owns its use.
  Scheduler(const SchedulerOptions& opts, model::PageAllocator* pages, ModelStepFn step);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request; *id names it for cancel(). Refuses with InvalidArgument what can never run (an
  // empty prompt, one at or over the context, one that cannot fit in the whole cache, bad sampling
  // values) and with Unavailable when the queue is full.
  base::Status submit(Request req, uint64_t* id);
  // Ends the request at the next step (on_finish "cancelled", pages released). Unknown ids: no-op.
  void cancel(uint64_t id);

  // One scheduling step (see the file comment). Returns the model's error, after which every request
  // has been finished with it and the scheduler refuses new ones.
  base::Status step();
  // True when nothing is running, waiting or handed over (as of the last step).
  bool idle();
  // Runs step() until shutdown(), sleeping while idle.
  void serve();
  // Ends serve() (which then finishes every request left "cancelled"); the destructor does the same
  // for a scheduler driven by step().
  void shutdown();

  SchedulerStats stats();

 private:
  struct Sequence;
  void take_inbox();
  bool grow(Sequence& s, int32_t positions);
  void release(Sequence& s);
  void preempt(size_t running_index);
  void admit_prefix(Sequence& s);
  void publish_full_pages(Sequence& s);
  void finish(Sequence& s, const std::string& reason, const base::Status& error = base::Status::Ok());
  bool sample(Sequence& s, int32_t k);
  void fail_all(const base::Status& error);
  void cancel_all();
  void update_counts_locked();  // stats_' gauges from the lists and the allocator; mu_ held

  SchedulerOptions opts_;
  model::PageAllocator* pages_;
  ModelStepFn model_step_;

  std::mutex mu_;  // guards the inbox, the counters read by stats(), stopping_ and failed_
  std::condition_variable wake_;
  std::vector<std::unique_ptr<Sequence>> inbox_;
  std::vector<uint64_t> cancels_;
  bool stopping_ = false;
  base::Status failed_;
  uint64_t next_id_ = 1;
  SchedulerStats stats_;

  // The driving thread's own.
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;  // oldest first
  std::vector<model::BatchSeq> batch_;
  std::vector<Sequence*> batch_seq_;
  std::vector<int32_t> next_;
  std::vector<float> logits_;  // [max_seqs, vocab]
  std::vector<float> scratch_;  // [vocab]
};

}  // namespace runtime
