// Building the dense student from a sparse teacher: same shape minus the experts, every
// non-expert tensor copied, and the FFN in each expert position initialised as configured.
#pragma once

#include <ATen/Tensor.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "data/batching.h"
#include "models/arch/seq2seq.h"

namespace distill {

enum class FfnInit {
  kFresh,           // random init (the paper's recipe)
  kMean,            // elementwise mean of the layer's experts
  kRouterWeighted,  // mean weighted by how often the router picks each expert (calibration batches)
  kTopExpert,       // the expert the router picks most often
  kConcatTopK,      // the k most-routed experts side by side in one FFN k times as wide, the output
                    // projection scaled so that it starts as their (frequency-weighted) mean
  kMergeAligned,    // frequency-weighted mean after each expert's hidden units are permuted to
                    // match the most-routed expert's (unit_matching.h)
};
FfnInit parse_ffn_init(const std::string& name);

// What the expert-built inits need beyond the mode.
struct FfnInitOptions {
  FfnInit mode = FfnInit::kFresh;
  int64_t top_k = 2;           // kConcatTopK: experts concatenated per layer
  bool plain_weights = false;  // kConcatTopK: equal shares instead of routed frequency
};
// Whether `mode` reads the teacher's routing frequency.
bool needs_routing_frequency(FfnInit mode);

// The student architecture: the teacher's, dense, optionally with another FFN width and dropout.
ModelConfig student_config(const ModelConfig& teacher, std::optional<int64_t> d_ff, double dropout);

// The student's FFN width: `d_ff` when given, else top_k x the teacher's for kConcatTopK, else the
// teacher's.
std::optional<int64_t> student_d_ff(const ModelConfig& teacher, std::optional<int64_t> d_ff, const FfnInitOptions& init);

// Fraction of real tokens each expert receives (top-1 choice), per sparse layer prefix
// ("encoder.block.1.layer.1."), measured with the teacher in eval mode.
std::map<std::string, at::Tensor> routing_frequency(Seq2SeqModel& teacher, const std::vector<Batch>& batches);

struct StudentInit {
  std::vector<std::string> copied;        // student tensors copied from the teacher
  std::vector<std::string> from_experts;  // student FFN tensors built from expert weights
  std::vector<std::string> widened;       // kConcatTopK: a dense FFN of the teacher tiled top_k times
                                          // (output scaled by 1 / top_k: the same function)
  std::vector<std::string> fresh;         // left at their random initialisation
};

// Fills `student` from `teacher`. `frequency` is needed when needs_routing_frequency(mode).
StudentInit init_student(Seq2SeqModel& student, const Seq2SeqModel& teacher, const FfnInitOptions& init,
                         bool copy_non_expert, const std::map<std::string, at::Tensor>& frequency = {});
inline StudentInit init_student(Seq2SeqModel& student, const Seq2SeqModel& teacher, FfnInit mode, bool copy_non_expert,
                                const std::map<std::string, at::Tensor>& frequency = {}) {
  return init_student(student, teacher, FfnInitOptions{mode}, copy_non_expert, frequency);
}

// From-scratch initialisation (Switch paper): truncated normal, std sqrt(scale / fan_in), cut at
// two standard deviations; norms at 1; embeddings with fan_in 1 (std sqrt(scale)). With `seed`,
// each tensor is drawn from its own generator seeded by the seed and the tensor's name, so two
// models built with one seed start with the same tensors wherever their names and shapes agree:
// a Switch teacher and its dense baseline then differ at the start only in their FFNs, which
// pairs them (less of the gap between them is the luck of the draw). Without, from the global
// generator.
void init_from_scratch(Seq2SeqModel& model, double scale, std::optional<uint64_t> seed = std::nullopt);

}  // namespace distill
