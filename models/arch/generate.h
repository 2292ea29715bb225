// Greedy decoding on token ids.
#pragma once

#include <ATen/Tensor.h>

#include <vector>

#include "models/arch/seq2seq.h"

namespace distill {

struct GenerateOptions {
  int64_t max_new_tokens = 20;          // tokens generated after the decoder start token
  bool suppress_pad = true;             // never emit the pad id (it doubles as the start token)
};

// input_ids [B, S], attention_mask [B, S] or undefined -> [B, 1 + n] beginning with the decoder
// start token; a sequence that emitted EOS is padded with the pad id; stops early when all did.
at::Tensor greedy_generate(Seq2SeqModel& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                           const GenerateOptions& options = {});

}  // namespace distill
