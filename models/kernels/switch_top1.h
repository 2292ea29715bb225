// The top-1 Switch layer with ReLU experts as one autograd node, on the CPU: router
// product, softmax, routing, gates and experts. Its backward writes the router's input gradient
// straight into the rows the experts' input gradient is added to. As separate nodes this was a
// router projection, a gate node and the experts, plus an [N, D] gradient autograd had to add.
#pragma once

#include <ATen/Tensor.h>

#include <vector>

#include "models/arch/routing.h"

namespace distill {

struct Top1Routing {
  int64_t batch = 0;                         // B
  int64_t seq_len = 0;                       // S; x has B * S rows
  CapacityMode mode = CapacityMode::kFixed;  // queues per sequence or per batch
  int64_t capacity = 0;                      // tokens per expert (and sequence, kFixed)
  at::Tensor active;                         // [N] bool on the CPU: tokens to route; undefined: all
};

struct Top1SwitchOutput {
  at::Tensor out;     // [N, D] gated expert outputs; exactly zero for dropped tokens
  at::Tensor logits;  // [N, E] router logits, differentiable (the router losses need them)
  at::Tensor expert;  // [N] int64 chosen expert, before capacity
  at::Tensor kept;    // [N] bool: the expert processed the token
};

// Whether top1_switch takes these operands: all float32 on the CPU, weights contiguous. Anything
// else goes through the general Switch layer. Under Bf16Products the experts' products run in bf16
// (float32 accumulation); the router's product and softmax stay float32.
bool top1_switch_applies(const at::Tensor& x, const at::Tensor& router_weight, const std::vector<at::Tensor>& wi,
                         const std::vector<at::Tensor>& wo);

// x [N, D]; noise [N, D] multiplies the router's input (jitter; undefined for none); router_weight
// [E, D]; wi[e] [F, D], wo[e] [D, F]; `dropout` on the experts' hidden units.
Top1SwitchOutput top1_switch(const at::Tensor& x, const at::Tensor& noise, const at::Tensor& router_weight,
                             const std::vector<at::Tensor>& wi, const std::vector<at::Tensor>& wo,
                             const Top1Routing& routing, double dropout);

}  // namespace distill
