// What a training stage (teacher, baseline, student) hands on: its model, where it is and what it cost.
#pragma once

#include <string>

#include "data/batching.h"
#include "distill/training/budget.h"

namespace distill {

struct StageResult {
  std::string name;          // teacher | baseline | student
  std::string model_dir;     // where the model is
  bool reused = false;       // a finished stage found on disk with the same settings (or a given checkpoint)
  bool trained_here = true;  // false: a checkpoint given by path
  Budget budget;             // what its training consumed (a given checkpoint: its stated trained_tokens)
  bool budget_known = true;  // false: a given checkpoint whose training budget was not stated
  DataPosition data_end;     // where its training stopped in the data stream
  std::string identity;      // hash of what determined it (its settings, or a given checkpoint's bytes)
};

}  // namespace distill
