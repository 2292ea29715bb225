// A sweep's own report: its rows (what each variant kept and what it cost) and sweep.md.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "distill/config/sweep_config.h"

namespace distill {

// One row of sweep.json from a variant's report.json: what it kept and what it cost.
nlohmann::json sweep_row(const SweepVariant& variant, const nlohmann::json& report);

// The student of `report` against the reference variant's, paired by seed: both distilled from
// the same teacher on the same batches, so the teacher's and the data's luck cancel. Null when
// their seeds have different teachers.
nlohmann::json student_minus_reference(const nlohmann::json& report, const nlohmann::json& reference);

// "29.0% (12.1 to 45.3)" for a gain preserved and its interval (null: none), or "undefined".
std::string gain_preserved_text(const nlohmann::json& gain, const nlohmann::json& ci);

// sweep.md from sweep.json.
std::string sweep_markdown(const nlohmann::json& sweep);

}  // namespace distill
