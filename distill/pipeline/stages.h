// A stage directory (teacher, baseline, student) and the record of what determined its model: a
// finished stage is reused only when that record matches the current settings, and a stage that
// is started afresh begins from an empty directory, so no report or resume mixes two runs.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "distill/training/stage_result.h"

namespace distill {

enum class StageAction {
  kReuse,   // finished with the same settings: use its model as it is
  kResume,  // unfinished with the same settings, and --resume: continue from its newest checkpoint
  kTrain,   // train from the start in an emptied directory
};

// Decides what to do with `dir` for a stage whose model is determined by `fingerprint`, logs
// why (naming the settings that changed), and for kTrain empties the directory and records the
// fingerprint in dir/stage.json.
StageAction prepare_stage(const std::string& name, const std::string& dir, const nlohmann::json& fingerprint, bool resume);

// Whether `dir` holds a finished stage trained under `fingerprint` (prepare_stage would reuse it).
bool stage_is_done(const std::string& dir, const nlohmann::json& fingerprint);

// What a finished stage recorded in DONE.json.
struct FinishedStage {
  Budget budget;
  DataPosition data_end;     // where its training stopped in the data stream
  std::string fingerprint;   // hash of the fingerprint it was trained under
};
FinishedStage read_finished_stage(const std::string& dir);

// Short stable hash of a fingerprint (hex), for naming a stage's identity in another's.
std::string fingerprint_hash(const nlohmann::json& fingerprint);

// Hash of a model directory's files (config.json and weights): the identity of a checkpoint that
// was not trained here.
std::string model_dir_hash(const std::string& dir);

// Hash of a file's bytes (hex); throws InputError naming the file when it cannot be read.
std::string file_hash(const std::string& path);

// "a.b: 1 -> 2" for each leaf that differs between two fingerprints (at most `limit`).
std::string fingerprint_diff(const nlohmann::json& before, const nlohmann::json& now, size_t limit = 6);

}  // namespace distill
