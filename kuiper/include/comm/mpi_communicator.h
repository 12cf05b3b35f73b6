// MpiCommunicator: the Communicator for ranks that are processes (started by mpirun) on the CPU, one
// rank per process: a tensor-parallel group, or the stages of a pipeline column. It is what lets CI
// (no GPUs) run the multi-process engine: `mpirun -np 4 llama_infer --device cpu --tp 2 --pp 2`.
// On GPUs the same roles are NCCL communicators (NcclHandler::init_process).
//
// all_reduce_sum is an all-gather of every rank's buffer followed by a local sum in rank order
// 0..N-1: every rank gets bitwise the same sum (an MPI_Allreduce need not give that), and the same
// bits as CpuCommunicator, which sums in that order too, so `--tp 2` under mpirun and in one process
// agree exactly. It costs N x the bytes of a ring all-reduce, which at the CPU's sizes ([n, dim] of a
// small model, N <= 4) is nothing; a scratch buffer of N x the largest tensor is kept (no allocation
// once the first prefill has run).
//
// Every call is a non-blocking MPI operation polled until done, bounded by the world's timeout and
// failing at once when any process aborted (comm/mpi_world.h): nothing waits for ever.
// Made by MpiWorld::split; host tensors only; used by the main thread of the process only.
#pragma once

#include "comm/communicator.h"
#include "comm/mpi_world.h"
