// `distill sweep`: every variant of a sweep trained with the stages they share trained once, each
// variant's report, and the sweep's own: OUTPUT/sweep.json, sweep.md and report.html.
#pragma once

#include <nlohmann/json.hpp>

#include "distill/config/sweep_config.h"

namespace distill {

// Trains what is not finished (the stages of all variants side by side, shared ones once), then
// evaluates and reports each variant into OUTPUT/<name>, and the sweep into OUTPUT. Returns sweep.json.
nlohmann::json run_sweep(const SweepConfig& sweep, bool resume);

}  // namespace distill
