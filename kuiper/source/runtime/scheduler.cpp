#include "runtime/scheduler.h"

#include <algorithm>
#include <cmath>

namespace runtime {

using base::Status;

struct Scheduler::Sequence {
  uint64_t id = 0;
  Request req;
  std::vector<int32_t> tokens;  // prompt, then the generated tokens
  int32_t prompt_len = 0;
  int32_t computed = 0;         // positions whose K/V are in `pages`
  int32_t published = 0;        // leading pages published to the prefix cache (or found there)
  int32_t generated = 0;
  int32_t cached_tokens = 0;
  bool admitted_once = false;
  std::vector<int32_t> pages;   // the page table
  sampler::Sampler sampler;
  bool greedy = true;
  bool in_batch = false;        // part of the step being planned
};

Scheduler::Scheduler(const SchedulerOptions& opts, model::PageAllocator* pages, ModelStepFn step)
    : opts_(opts), pages_(pages), model_step_(std::move(step)) {
  batch_.resize(opts_.max_seqs);
  batch_seq_.resize(opts_.max_seqs);
  next_.resize(opts_.max_seqs);
  logits_.resize((size_t)opts_.max_seqs * opts_.vocab_size);
  scratch_.resize(opts_.vocab_size);
  running_.reserve(opts_.max_seqs);
}

Scheduler::~Scheduler() { cancel_all(); }

// Every request left ends "cancelled" (after serve() has returned: on the driving thread, or the owner's).
void Scheduler::cancel_all() {
  take_inbox();
  for (auto& s : running_) finish(*s, "cancelled");
  running_.clear();
  for (auto& s : waiting_) finish(*s, "cancelled");
  waiting_.clear();
  std::lock_guard<std::mutex> lock(mu_);
  update_counts_locked();
}

void Scheduler::update_counts_locked() {
  stats_.running = (int32_t)running_.size();
  stats_.waiting = (int32_t)waiting_.size();
  stats_.pages_total = pages_->n_pages();
  stats_.pages_used = pages_->used_pages();
  stats_.pages_cached = pages_->cached_pages();
  stats_.pages_free = pages_->free_pages() - pages_->cached_pages();
}

Status Scheduler::submit(Request req, uint64_t* id) {
  const int32_t ps = pages_->page_size();
  if (req.prompt.empty()) return base::InvalidArgument("the prompt is empty");
  if ((int32_t)req.prompt.size() >= opts_.max_seq_len)
    return base::InvalidArgument("the prompt (" + std::to_string(req.prompt.size()) + " tokens) does not fit in the " +
                                 std::to_string(opts_.max_seq_len) + "-token context");
  if (req.max_tokens < 0) return base::InvalidArgument("max_tokens must not be negative");
  for (int32_t t : req.prompt)
    if (t < 0 || t >= opts_.vocab_size) return base::InvalidArgument("token id " + std::to_string(t) + " outside the vocabulary");
  const int64_t longest = std::min<int64_t>((int64_t)req.prompt.size() + req.max_tokens, opts_.max_seq_len);
  if ((longest + ps - 1) / ps > pages_->n_pages())
    return base::InvalidArgument("the request needs up to " + std::to_string(longest) +
                                 " positions; the KV cache holds " + std::to_string((int64_t)pages_->n_pages() * ps));
  auto s = std::make_unique<Sequence>();
  KP_RETURN_IF_ERROR(sampler::Sampler::create(req.sampling, opts_.vocab_size, &s->sampler, opts_.max_seq_len));
  s->greedy = s->sampler.is_greedy() && !req.logprobs;
  s->tokens = req.prompt;
  s->tokens.reserve(longest + 1);
  s->prompt_len = (int32_t)req.prompt.size();
  s->pages.reserve((longest + ps - 1) / ps + 1);
  s->req = std::move(req);
  std::lock_guard<std::mutex> lock(mu_);
  if (!failed_.ok()) return failed_;
  if (stopping_) return base::Unavailable("the server is shutting down");
  if ((int64_t)inbox_.size() + stats_.waiting >= opts_.max_waiting) {
    ++stats_.refused;
    return base::Unavailable("the server is busy: " + std::to_string(opts_.max_waiting) + " requests are waiting");
  }
  s->id = next_id_++;
  *id = s->id;
  inbox_.push_back(std::move(s));
  wake_.notify_one();
  return Status::Ok();
}

void Scheduler::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancels_.push_back(id);
  wake_.notify_one();
}

bool Scheduler::idle() {
  std::lock_guard<std::mutex> lock(mu_);
  return inbox_.empty() && cancels_.empty() && stats_.waiting == 0 && stats_.running == 0;
}

void Scheduler::take_inbox() {
  std::vector<std::unique_ptr<Sequence>> in;
  std::vector<uint64_t> cancels;
  {
    std::lock_guard<std::mutex> lock(mu_);
    in.swap(inbox_);
    cancels.swap(cancels_);
  }
  for (auto& s : in) waiting_.push_back(std::move(s));
  for (uint64_t id : cancels) {
    for (size_t i = 0; i < running_.size(); ++i) {
      if (running_[i]->id != id) continue;
      std::unique_ptr<Sequence> s = std::move(running_[i]);
      running_.erase(running_.begin() + i);
      finish(*s, "cancelled");
      break;
    }
    for (size_t i = 0; i < waiting_.size(); ++i) {
      if (waiting_[i]->id != id) continue;
      std::unique_ptr<Sequence> s = std::move(waiting_[i]);
      waiting_.erase(waiting_.begin() + i);
      finish(*s, "cancelled");
      break;
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  update_counts_locked();
}

// Pages for positions [0, positions); false (having taken none) when the cache has too few free.
bool Scheduler::grow(Sequence& s, int32_t positions) {
  const int32_t ps = pages_->page_size();
  const int32_t need = (positions + ps - 1) / ps - (int32_t)s.pages.size();
  if (need <= 0) return true;
  if (pages_->free_pages() < need) return false;
  for (int32_t i = 0; i < need; ++i) {
    int32_t p = -1;
    pages_->allocate(&p);
    s.pages.push_back(p);
  }
  return true;
}

void Scheduler::release(Sequence& s) {
  publish_full_pages(s);
  for (int32_t p : s.pages) pages_->release(p);
  s.pages.clear();
  s.computed = 0;
  s.published = 0;
}

// The sequence goes back to the front of the queue without its pages; its tokens so far (prompt and
// generated) are prefilled again when it is admitted next.
void Scheduler::preempt(size_t i) {
  std::unique_ptr<Sequence> s = std::move(running_[i]);
  running_.erase(running_.begin() + i);
  release(*s);
  waiting_.push_front(std::move(s));
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.preemptions;
}

// Takes the longest run of full pages of the sequence's tokens that the prefix cache holds, leaving at
// least one token to compute (its logits give the next token).
void Scheduler::admit_prefix(Sequence& s) {
  const int32_t ps = pages_->page_size();
  int32_t parent = -1;
  if (opts_.prefix_cache) {
    while ((int32_t)(s.pages.size() + 1) * ps <= (int32_t)s.tokens.size() - 1) {
      const int32_t p = pages_->lookup(parent, s.tokens.data() + s.pages.size() * ps);
      if (p < 0) break;
      s.pages.push_back(p);
      parent = p;
    }
  }
  s.computed = (int32_t)s.pages.size() * ps;
  s.published = (int32_t)s.pages.size();
  if (!s.admitted_once) {
    s.admitted_once = true;
    s.cached_tokens = s.computed;
    std::lock_guard<std::mutex> lock(mu_);
    stats_.prompt_tokens += s.prompt_len;
    stats_.prefix_hit_tokens += s.computed;
  }
}

void Scheduler::publish_full_pages(Sequence& s) {
  if (!opts_.prefix_cache) return;
  const int32_t ps = pages_->page_size();
  while (s.published < (int32_t)s.pages.size() && (s.published + 1) * ps <= s.computed) {
    const int32_t j = s.published;
    pages_->publish(s.pages[j], j > 0 ? s.pages[j - 1] : -1, s.tokens.data() + (size_t)j * ps);
    ++s.published;
  }
}

void Scheduler::finish(Sequence& s, const std::string& reason, const Status& error) {
  release(s);
  Finish f;
  f.reason = reason;
  f.error = error;
  f.prompt_tokens = s.prompt_len;
  f.completion_tokens = s.generated;
  f.cached_tokens = s.cached_tokens;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.finished;
    if (reason == "cancelled") ++stats_.cancelled;
  }
  if (s.req.on_finish) s.req.on_finish(f);
}

// The k-th row's next token for `s`; false when the sequence has ended (and been finished).
bool Scheduler::sample(Sequence& s, int32_t k) {
  int32_t token = next_[k];
  float logprob = 0.f;
  if (!s.greedy) {
    float* row = logits_.data() + (size_t)k * opts_.vocab_size;
    float lse = 0.f;
    if (s.req.logprobs) {  // log softmax of the raw logits, before the sampler uses them as scratch
      const float mx = *std::max_element(row, row + opts_.vocab_size);
      double sum = 0;
      for (int32_t i = 0; i < opts_.vocab_size; ++i) sum += std::exp((double)row[i] - mx);
      lse = mx + (float)std::log(sum);
      std::copy(row, row + opts_.vocab_size, scratch_.begin());
    }
    token = s.sampler.is_greedy() ? sampler::argmax(row, opts_.vocab_size) : s.sampler.sample(row);
    if (s.req.logprobs) logprob = scratch_[token] - lse;
  }
  s.sampler.accept(token);
  const auto& stops = s.req.stop_ids;
  if (std::find(stops.begin(), stops.end(), token) != stops.end()) return false;  // end of text
  s.tokens.push_back(token);
  ++s.generated;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.generated_tokens;
  }
  return s.req.on_token ? s.req.on_token(token, logprob) : true;
}

void Scheduler::fail_all(const Status& error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    failed_ = error;
  }
  take_inbox();
  for (auto& s : running_) finish(*s, "error", error);
  running_.clear();
  for (auto& s : waiting_) finish(*s, "error", error);
  waiting_.clear();
  std::lock_guard<std::mutex> lock(mu_);
  update_counts_locked();
}

Status Scheduler::step() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failed_.ok()) return failed_;
  }
  take_inbox();
  int32_t n = 0, budget = opts_.token_budget;
  bool preempted = false;
  auto add = [&](Sequence& s, int32_t count) {
    model::BatchSeq& b = batch_[n];
    b.tokens = s.tokens.data() + s.computed;
    b.n = count;
    b.pos = s.computed;
    b.pages = s.pages.data();
    b.n_pages = (int32_t)s.pages.size();
    b.sample = s.computed + count == (int32_t)s.tokens.size();
    b.host_logits = b.sample && !s.greedy;
    s.in_batch = true;
    batch_seq_[n++] = &s;
    budget -= count;
  };
  // The running sequences, oldest first: first every decode row (one token each), then the prefill
  // chunks, so that a long prompt never holds up the streams already running. A decode row that finds
  // no page takes the pages of the newest sequence (not yet in the step), or waits itself when it is
  // the newest; a prefill chunk that finds none waits for the next step.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < running_.size() && budget > 0;) {
      Sequence& s = *running_[i];
      const int32_t left = (int32_t)s.tokens.size() - s.computed;
      if (s.in_batch || (pass == 0) != (left == 1)) {
        ++i;
        continue;
      }
      const int32_t count = std::min(left, budget);
      bool fits = grow(s, s.computed + count);
      while (!fits && pass == 0 && running_.size() - 1 > i) {
        preempt(running_.size() - 1);
        preempted = true;
        fits = grow(s, s.computed + count);
      }
      if (fits) {
        add(s, count);
        ++i;
      } else if (pass == 0) {  // the newest left: back to the queue
        preempt(i);
        preempted = true;
      } else {
        ++i;
      }
    }
  }
  // Admissions, first come first served, unless this step had to preempt (the pages just freed would
  // only be taken back and forth).
  while (!preempted && !waiting_.empty() && (int32_t)running_.size() < opts_.max_seqs && budget > 0) {
    Sequence& s = *waiting_.front();
    admit_prefix(s);
    const int32_t count = std::min<int32_t>((int32_t)s.tokens.size() - s.computed, budget);
    if (!grow(s, s.computed + count)) {  // no room now: give the prefix back, wait for pages
      release(s);
      break;
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    add(s, count);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    update_counts_locked();
  }
  if (n == 0) return Status::Ok();

  model::StepOutput out;
  out.next = next_.data();
  out.logits = logits_.data();
  const Status st = model_step_(batch_.data(), n, out);
  if (!st.ok()) {
    fail_all(st);
    return st;
  }
  int64_t prefilled = 0;
  for (int32_t k = 0; k < n; ++k) {
    Sequence& s = *batch_seq_[k];
    s.in_batch = false;
    s.computed += batch_[k].n;
    if (batch_[k].n > 1 || !batch_[k].sample) prefilled += batch_[k].n;
    publish_full_pages(s);
  }
  // Sampling, and the end of the sequences that are done; finished ones leave the running list.
  for (int32_t k = 0; k < n; ++k) {
    Sequence& s = *batch_seq_[k];
    if (!batch_[k].sample) continue;
    std::string reason;
    if (!sample(s, k)) reason = "stop";
    else if (s.generated >= s.req.max_tokens || (int32_t)s.tokens.size() >= opts_.max_seq_len) reason = "length";
    if (reason.empty()) continue;
    for (size_t i = 0; i < running_.size(); ++i) {
      if (running_[i].get() != &s) continue;
      std::unique_ptr<Sequence> done = std::move(running_[i]);
      running_.erase(running_.begin() + i);
      finish(*done, reason);
      break;
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.steps;
  stats_.prefilled_tokens += prefilled;
  update_counts_locked();
  return Status::Ok();
}

void Scheduler::serve() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] {
        return stopping_ || !inbox_.empty() || !cancels_.empty() || !waiting_.empty() || !running_.empty();
      });
      if (stopping_) break;
    }
    if (!step().ok()) {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stopping_ || !inbox_.empty(); });
      if (stopping_) break;
      lock.unlock();
      fail_all(failed_);
    }
  }
  cancel_all();
}

void Scheduler::shutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  stopping_ = true;
  wake_.notify_all();
}

SchedulerStats Scheduler::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace runtime
