// Timing of the collectives of a tensor-parallel runner, for llama_bench's per-token split.
//
// Batch-1 decode cannot overlap communication with compute (each op needs the sum before it), so a
// decode token costs compute + 2 x n_layers all-reduces of [1, dim] + one all-gather of the logits.
// These functions time that communication alone, on every rank at once, the way decode issues it.
#pragma once

#include <cstdint>

#include "base/status.h"
#include "runtime/tp_runner.h"

namespace runtime {

// Microseconds per all-reduce of [1, count] elements of `dtype`, inside a CUDA graph: a graph of 100
// back-to-back all-reduces is replayed 20 times and the time divided (GPU; on the CPU the calls are
// made directly). The slowest rank's figure.
base::Status time_all_reduce_us(TpRunner& r, int64_t count, base::DType dtype, double* us);

// Under mpirun with pipeline stages: microseconds of one transfer of [1, count] elements of `dtype`
// from one stage to the next, the way decode hands on the hidden state. Stages 0 and 1 of each
// pipeline column send it back and forth (100 round trips, inside a CUDA graph on GPUs) and half a
// round trip is reported, the slowest column's; every process takes part in the final reduction.
base::Status time_stage_transfer_us(TpRunner& r, int64_t count, base::DType dtype, double* us);

// Milliseconds of one decode token's communication: 2 x n_layers all-reduces of [1, dim] and one
// all-gather of the logits, issued as plain launches. The slowest rank's figure.
base::Status time_decode_comm_ms(TpRunner& r, double* ms);

}  // namespace runtime
