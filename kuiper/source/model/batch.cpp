#include "model/batch.h"

#include <string>

namespace model {

void StepPlan::init(const StepLimits& l, int32_t* block) {
  limits_ = l;
  tokens = block;
  positions = tokens + l.max_tokens;
  slots = positions + l.max_tokens;
  tables = slots + l.max_tokens;
  seq_lens = tables + (int64_t)l.max_seqs * l.max_pages;
  chunk_pos = seq_lens + l.max_seqs;
  logit_rows = chunk_pos + l.max_seqs;
  chunk_start.assign(l.max_seqs, 0);
  chunk_len.assign(l.max_seqs, 0);
  out_row.assign(l.max_seqs, -1);
}

namespace {
std::string seq_name(int32_t i) { return "sequence " + std::to_string(i) + ": "; }

base::Status check_seq(const BatchSeq& s, int32_t i, const StepLimits& l) {
  if (s.n < 1 || s.tokens == nullptr) return base::InvalidArgument(seq_name(i) + "no tokens");
  if (s.pos < 0 || s.pos + s.n > l.max_seq_len)
    return base::InvalidArgument("context full: position " + std::to_string(s.pos + s.n) + " exceeds max_seq_len " +
                                 std::to_string(l.max_seq_len));
  const int64_t need = ((int64_t)s.pos + s.n + l.page_size - 1) / l.page_size;
  if (s.pages == nullptr || s.n_pages < need || s.n_pages > l.max_pages)
    return base::InvalidArgument(seq_name(i) + std::to_string(s.n_pages) + " pages for " +
                                 std::to_string(s.pos + s.n) + " positions (pages of " + std::to_string(l.page_size) +
                                 ", at most " + std::to_string(l.max_pages) + ")");
  for (int32_t j = 0; j < need; ++j)
    if (s.pages[j] < 0 || s.pages[j] >= l.n_pages)
      return base::InvalidArgument(seq_name(i) + "page " + std::to_string(s.pages[j]) + " outside the cache of " +
                                   std::to_string(l.n_pages) + " pages");
  for (int32_t t = 0; t < s.n; ++t)
    if (s.tokens[t] < 0 || s.tokens[t] >= l.vocab_size)
      return base::InvalidArgument("token id " + std::to_string(s.tokens[t]) + " outside the vocabulary");
  return base::Status::Ok();
}
}  // namespace

base::Status StepPlan::build(const BatchSeq* seqs, int32_t count) {
  const StepLimits& l = limits_;
  if (count < 1 || count > l.max_seqs)
    return base::InvalidArgument("a step of " + std::to_string(count) + " sequences (at most " +
                                 std::to_string(l.max_seqs) + ")");
  int64_t total = 0;
  for (int32_t i = 0; i < count; ++i) {
    KP_RETURN_IF_ERROR(check_seq(seqs[i], i, l));
    total += seqs[i].n;
  }
  if (total > l.max_tokens)
    return base::InvalidArgument("forward: token count out of range (" + std::to_string(total) + " tokens, at most " +
                                 std::to_string(l.max_tokens) + " a step)");
  n_seqs = count;
  n_rows = 0;
  n_decode = 0;
  n_chunks = 0;
  n_logits = 0;
  // `row` is where sequence i's tokens go; decode rows first, then the chunks.
  auto place = [&](const BatchSeq& s, int32_t table_row) {
    const int32_t row = n_rows;
    int32_t* table = tables + (int64_t)table_row * l.max_pages;
    for (int32_t j = 0; j < s.n_pages; ++j) table[j] = s.pages[j];
    for (int32_t t = 0; t < s.n; ++t) {
      const int32_t p = s.pos + t;
      tokens[row + t] = s.tokens[t];
      positions[row + t] = p;
      slots[row + t] = s.pages[p / l.page_size] * l.page_size + p % l.page_size;
    }
    n_rows += s.n;
    return row;
  };
  int32_t decode_rows = 0;
  for (int32_t i = 0; i < count; ++i) decode_rows += seqs[i].n == 1;
  // out_row[i] first holds the row of sequence i's last token, then its index among the classifier rows.
  int32_t next_decode = 0, next_chunk = 0;
  for (int32_t i = 0; i < count; ++i) {
    if (seqs[i].n != 1) continue;
    const int32_t r = place(seqs[i], next_decode);
    seq_lens[next_decode] = seqs[i].pos + 1;
    out_row[i] = r;
    ++next_decode;
  }
  n_decode = next_decode;
  for (int32_t i = 0; i < count; ++i) {
    if (seqs[i].n == 1) continue;
    const int32_t r = place(seqs[i], decode_rows + next_chunk);
    chunk_start[next_chunk] = r;
    chunk_pos[next_chunk] = seqs[i].pos;
    chunk_len[next_chunk] = seqs[i].n;
    out_row[i] = r + seqs[i].n - 1;
    ++next_chunk;
  }
  n_chunks = next_chunk;
  for (int32_t i = 0; i < count; ++i) {
    if (!seqs[i].sample && !seqs[i].host_logits) {
      out_row[i] = -1;
      continue;
    }
    logit_rows[n_logits] = out_row[i];
    out_row[i] = n_logits++;
  }
  // The contiguous-cache kernels serve one sequence whose pages are 0, 1, 2, ...: a single sequence of
  // llama_infer, or a server's sequence that happens to hold the first pages in order.
  contiguous = false;
  if (count == 1) {
    const BatchSeq& s = seqs[0];
    const int32_t need = (s.pos + s.n + l.page_size - 1) / l.page_size;
    contiguous = true;
    for (int32_t j = 0; j < need && contiguous; ++j) contiguous = s.pages[j] == j;
  }
  return base::Status::Ok();
}

void StepPlan::pad_decode(int32_t bucket) {
  for (int32_t r = n_decode; r < bucket; ++r) {
    tokens[r] = 0;
    positions[r] = 0;
    slots[r] = -1;
    seq_lens[r] = 0;
    int32_t* table = tables + (int64_t)r * limits_.max_pages;
    table[0] = 0;
  }
  // Every row's logits: sequence i is row i (decode rows keep the batch's order).
  for (int32_t r = 0; r < bucket; ++r) logit_rows[r] = r;
  for (int32_t i = 0; i < n_seqs; ++i) out_row[i] = i;
  n_rows = bucket;
  n_decode = bucket;
  n_logits = bucket;
}

}  // namespace model
