// `distill sweep`: every variant of a sweep trained with the stages they share trained once, each
// variant's report, and the sweep's own: OUTPUT/sweep.json, sweep.md and report.html.
#pragma once

#include <nlohmann/json.hpp>

#include "distill/sweep_config.h"

namespace distill {

// Trains what is not finished (the stages of all variants side by side, shared ones once), then
// evaluates and reports each variant into OUTPUT/<name>, and the sweep into OUTPUT. Returns sweep.json.
nlohmann::json run_sweep(const SweepConfig& sweep, bool resume);

// One row of sweep.json from a variant's report.json: what it kept and what it cost.
nlohmann::json sweep_row(const SweepVariant& variant, const nlohmann::json& report);

// "29.0% (12.1 to 45.3)" for a gain preserved and its interval (null: none), or "undefined".
std::string gain_preserved_text(const nlohmann::json& gain, const nlohmann::json& ci);

// sweep.md from sweep.json.
std::string sweep_markdown(const nlohmann::json& sweep);

}  // namespace distill
