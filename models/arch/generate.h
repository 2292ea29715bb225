// Greedy decoding on token ids.
#pragma once

#include <ATen/Tensor.h>

#include <vector>

#include "models/arch/seq2seq.h"

namespace distill {

struct GenerateOptions {
  int64_t max_new_tokens = 20;          // tokens generated after the decoder start token
  bool suppress_pad = true;             // never emit the pad id (it doubles as the start token)
  bool use_cache = true;                // keep each step's keys and values (decode_step) instead of
                                        // re-running the decoder on the whole prefix every step
};

// input_ids [B, S], attention_mask [B, S] or undefined -> [B, 1 + n] beginning with the decoder
// start token; a sequence that emitted EOS is padded with the pad id; stops early when all did.
// With the cache, finished sequences leave the batch, so later steps only decode the rest. Sparse
// layers keep every token (DroplessRouting): a sequence's output does not depend on the others in
// its batch, and the cache gives the same tokens as re-running the decoder.
at::Tensor greedy_generate(Seq2SeqModel& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                           const GenerateOptions& options = {});

}  // namespace distill
