// The seed's reading order starts here: the NCCL handler now lives in the communication part of the
// library, between the model and tensor/ (comm/nccl_handler.h, comm/communicator.h).
#pragma once

#include "comm/nccl_handler.h"
