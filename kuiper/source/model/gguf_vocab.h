// A GGUF SentencePiece-style vocabulary (tokenizer.ggml.model "llama": pieces, scores, piece types)
// as a serialized SentencePiece ModelProto, so that the sentencepiece library itself tokenizes it,
// exactly as it does the original tokenizer.model.
//
// Debian's libsentencepiece-dev ships no sentencepiece_model.pb.h (the proto classes), and the
// library loads a model only from its serialized bytes, so the few fields it needs are written here
// in protobuf's wire format (field numbers from sentencepiece_model.proto):
//   ModelProto      1 pieces (repeated) { 1 piece, 2 score (float), 3 type (enum, NORMAL when absent) }
//                   2 trainer_spec { 3 model_type (BPE = 2), 4 vocab_size, 35 byte_fallback,
//                                    40 unk_id, 41 bos_id, 42 eos_id, 43 pad_id (-1),
//                                    45 unk_piece, 46 bos_piece, 47 eos_piece }
//                   3 normalizer_spec { 1 name "identity", 3 add_dummy_prefix, 4 remove_extra_whitespaces }
// GGUF does not record the SentencePiece model type: llama.cpp tokenizes every "llama" vocabulary as
// BPE over the scores, and so does this (Llama 2, TinyLlama, Code Llama and Mistral are BPE models).
#pragma once

#include <string>

#include "base/status.h"
#include "model/model_file.h"

namespace model {

// Checks `v` (piece types 1..6, one unknown piece, ids in range, no empty piece) and writes the proto.
base::Status sentencepiece_proto_from_vocabulary(const Vocabulary& v, const std::string& origin, std::string* proto);

}  // namespace model
