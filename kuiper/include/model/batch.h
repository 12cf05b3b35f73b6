// A batch: what one forward step of the model runs. Several sequences, each with a few tokens at its
// own positions and its own page table into the paged KV cache (model/kv_cache.h):
//
//   seq 0: decode   1 token  at pos 37      pages [4, 9, 2]
//   seq 1: decode   1 token  at pos 5       pages [7]
//   seq 2: prefill 96 tokens at pos 128     pages [0, 1, 3, ..., 13]   (a chunk of a long prompt)
//
// StepPlan turns that into the flat int32 arrays the kernels read, laid out once for the largest step
// (max_tokens tokens, max_seqs sequences, max_pages pages per sequence), so that planning a step
// allocates nothing. Rows are ordered decode first: every one-token sequence becomes one row of a
// B-row decode group (one matrix product per linear layer, one paged decode attention), then each
// longer sequence is one prefill chunk (one paged prefill attention each). The rows whose next-token
// logits are wanted are gathered for the classifier in the order of the sequences.
#pragma once

#include <cstdint>
#include <vector>

#include "base/status.h"

namespace model {

// One sequence's part of a step: tokens at positions [pos, pos + n) of that sequence.
struct BatchSeq {
  const int32_t* tokens = nullptr;  // [n]
  int32_t n = 0;
  int32_t pos = 0;
  const int32_t* pages = nullptr;   // page table: pages[j] holds positions [j * page_size, (j + 1) * page_size)
  int32_t n_pages = 0;              // entries of `pages`; must cover positions [0, pos + n)
  bool sample = true;               // wants the next token after its last one (greedy id in StepOutput::next)
  bool host_logits = false;         // also wants the fp32 logits of that token on the host
};

// Where a step's results go (host memory, indexed by the sequence's index in the batch).
struct StepOutput {
  int32_t* next = nullptr;  // [n_seqs]: argmax of the logits, for each sequence with `sample`
  float* logits = nullptr;  // [n_seqs, vocab]: fp32 logits, for each sequence with `host_logits`
};

struct StepLimits {
  int32_t max_tokens = 0;   // tokens of one step (the workspace's rows)
  int32_t max_seqs = 0;     // sequences of one step
  int32_t max_pages = 0;    // page-table entries of one sequence: ceil(max_seq_len / page_size)
  int32_t page_size = 0;
  int32_t n_pages = 0;      // pages of the cache
  int32_t max_seq_len = 0;  // positions of one sequence
  int32_t vocab_size = 0;
};

class StepPlan {
 public:
  // Sizes of the int32 arrays; ints() is their total, laid out in this order in one block.
  static int64_t ints(const StepLimits& l) { return 3 * (int64_t)l.max_tokens + (int64_t)l.max_seqs * (l.max_pages + 3); }
  // Binds the plan to `block` (ints(l) int32s, host memory: pinned on GPUs) and reserves its host-only
  // bookkeeping. The only allocation of the plan's life.
  void init(const StepLimits& l, int32_t* block);

  // Plans `seqs` (checked: counts, positions, pages, token ids; the message says what is wrong).
  base::Status build(const BatchSeq* seqs, int32_t n_seqs);
  // A decode-only step replayed from a graph of `bucket` rows: rows [n_decode, bucket) become padding
  // (token 0, no cache write, no attention) and every row's logits are computed.
  void pad_decode(int32_t bucket);

  // Host arrays (mirrored on the device at the same offsets).
  int32_t* tokens = nullptr;      // [max_tokens]
  int32_t* positions = nullptr;   // [max_tokens]  absolute position of each row
  int32_t* slots = nullptr;       // [max_tokens]  cache slot each row's K/V goes to (-1: none)
  int32_t* tables = nullptr;      // [max_seqs, max_pages]  decode rows' tables, then each chunk's
  int32_t* seq_lens = nullptr;    // [max_seqs]    decode row b attends to positions [0, seq_lens[b])
  int32_t* chunk_pos = nullptr;   // [max_seqs]    start position of prefill chunk c (at index c)
  int32_t* logit_rows = nullptr;  // [max_seqs]    rows gathered for the classifier

  // The step's shape (host only).
  int32_t n_seqs = 0;
  int32_t n_rows = 0;      // tokens in the step (padding included after pad_decode)
  int32_t n_decode = 0;    // rows [0, n_decode) are one-token sequences
  int32_t n_chunks = 0;    // prefill chunks, rows from chunk_start[c], chunk_len[c] long
  int32_t n_logits = 0;    // rows gathered for the classifier
  bool contiguous = false; // one sequence whose table is the identity: the contiguous-cache kernels apply
  std::vector<int32_t> chunk_start, chunk_len;  // [max_seqs]
  std::vector<int32_t> out_row;                 // [max_seqs] classifier row of sequence i, or -1

  const StepLimits& limits() const { return limits_; }
  // Offsets (in int32s) of the arrays in the block.
  int64_t offset_of(const int32_t* array) const { return array - tokens; }

 private:
  StepLimits limits_;
};

}  // namespace model
