#include "models/arch/generate.h"

#include <torch/torch.h>

namespace distill {

at::Tensor greedy_generate(Seq2SeqModel& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                           const GenerateOptions& options) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  const auto& c = model->config();
  const auto B = input_ids.size(0);
  auto memory = model->encode(input_ids, attention_mask).last_hidden_state;  // [B, S, D]
  auto out = torch::full({B, 1}, c.decoder_start_token_id, input_ids.options());
  auto finished = torch::zeros({B}, torch::TensorOptions().dtype(torch::kBool).device(input_ids.device()));
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    // No key/value cache: the decoder re-runs on the prefix; fine for the short outputs we check.
    auto hidden = model->decode(out, {}, memory, attention_mask).last_hidden_state;
    auto logits = model->lm_logits(hidden.select(1, hidden.size(1) - 1));  // [B, V]
    if (options.suppress_pad) logits.select(1, c.pad_token_id).fill_(-std::numeric_limits<float>::infinity());
    auto next = logits.argmax(-1);                                          // [B]
    next = torch::where(finished, torch::full_like(next, c.pad_token_id), next);
    out = torch::cat({out, next.unsqueeze(1)}, 1);
    finished = finished | (next == c.eos_token_id);
    if (finished.all().item<bool>()) break;
  }
  if (was_training) model->train();
  return out;
}

}  // namespace distill
