#include "models/arch/generate.h"

#include <torch/torch.h>

#include <limits>

#include "models/arch/routing.h"

namespace distill {
namespace {

// The next token of each row from its last position's logits [B, V].
at::Tensor pick(Seq2SeqModel& model, const at::Tensor& hidden_last, const GenerateOptions& options) {
  auto logits = model->lm_logits(hidden_last);  // [B, V]
  if (options.suppress_pad) {
    logits.select(1, model->config().pad_token_id).fill_(-std::numeric_limits<float>::infinity());
  }
  return logits.argmax(-1);  // [B]
}

at::Tensor generate_without_cache(Seq2SeqModel& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                  const GenerateOptions& options) {
  const auto& c = model->config();
  const auto B = input_ids.size(0);
  auto memory = model->encode(input_ids, attention_mask).last_hidden_state;  // [B, S, D]
  auto out = torch::full({B, 1}, c.decoder_start_token_id, input_ids.options());
  auto finished = torch::zeros({B}, torch::TensorOptions().dtype(torch::kBool).device(input_ids.device()));
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    auto hidden = model->decode(out, {}, memory, attention_mask).last_hidden_state;  // [B, t, D]
    auto next = pick(model, hidden.select(1, hidden.size(1) - 1), options);
    next = torch::where(finished, torch::full_like(next, c.pad_token_id), next);
    out = torch::cat({out, next.unsqueeze(1)}, 1);
    finished = finished | (next == c.eos_token_id);
    if (finished.all().item<bool>()) break;
  }
  return out;
}

// Keeps rows `keep` [b] of everything a step reads: the cache, the memory and its mask.
void keep_rows(DecoderCache& cache, at::Tensor& memory, at::Tensor& memory_mask, const at::Tensor& keep) {
  for (auto* layers : {&cache.self, &cache.cross}) {
    for (auto& a : *layers) {
      a.k = a.k.index_select(0, keep);
      a.v = a.v.index_select(0, keep);
    }
  }
  memory = memory.index_select(0, keep);
  if (memory_mask.defined()) memory_mask = memory_mask.index_select(0, keep);
}

at::Tensor generate_with_cache(Seq2SeqModel& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                               const GenerateOptions& options) {
  const auto& c = model->config();
  const auto B = input_ids.size(0);
  auto memory = model->encode(input_ids, attention_mask).last_hidden_state;  // [B, S, D]
  auto memory_mask = attention_mask;
  auto out = torch::full({B, 1 + options.max_new_tokens}, c.pad_token_id, input_ids.options());
  out.select(1, 0).fill_(c.decoder_start_token_id);
  DecoderCache cache;
  cache.max_length = options.max_new_tokens;
  auto rows = torch::arange(B, input_ids.options());                 // [b]: out's row of each live row
  auto last = torch::full({B, 1}, c.decoder_start_token_id, input_ids.options());  // [b, 1]
  int64_t produced = 0;
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    auto hidden = model->decode_step(last, memory, memory_mask, cache);  // [b, 1, D]
    auto next = pick(model, hidden.select(1, 0), options);              // [b]
    out.select(1, step + 1).index_copy_(0, rows, next);
    produced = step + 1;
    auto alive = next != c.eos_token_id;  // [b]
    const auto n_alive = alive.sum().item<int64_t>();
    if (n_alive == 0) break;
    if (n_alive < rows.size(0)) {
      auto keep = alive.nonzero().squeeze(1);
      keep_rows(cache, memory, memory_mask, keep);
      rows = rows.index_select(0, keep);
      next = next.index_select(0, keep);
    }
    last = next.unsqueeze(1);
  }
  return out.narrow(1, 0, 1 + produced).contiguous();
}

}  // namespace

at::Tensor greedy_generate(Seq2SeqModel& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                           const GenerateOptions& options) {
  torch::NoGradGuard no_grad;
  DroplessRouting keep_every_token;
  const bool was_training = model->is_training();
  model->eval();
  auto out = options.use_cache ? generate_with_cache(model, input_ids, attention_mask, options)
                               : generate_without_cache(model, input_ids, attention_mask, options);
  if (was_training) model->train();
  return out;
}

}  // namespace distill
