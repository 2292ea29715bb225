#include "distill/pipeline/stages.h"

#include "distill/process/distributed.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <vector>

#include "distill/training/trainer.h"
#include "models/io/atomic_file.h"
#include "models/errors.h"

namespace distill {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// 64-bit multiply-xorshift over 8-byte words: fast enough for multi-gigabyte checkpoints, and an
// identity check, not a defence against crafted collisions.
struct Hasher {
  uint64_t h = 0x243F6A8885A308D3ull;
  void words(const char* p, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      mix(w);
    }
    uint64_t tail = 0;
    std::memcpy(&tail, p + i, n - i);
    mix(tail ^ (static_cast<uint64_t>(n - i) << 56));
  }
  void mix(uint64_t w) {
    h = (h ^ w) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
  }
  std::string hex() const { return fmt::format("{:016x}", h); }
};

void flatten(const json& j, const std::string& prefix, std::map<std::string, std::string>& out) {
  if (j.is_object() && !j.empty()) {
    for (auto it = j.begin(); it != j.end(); ++it) flatten(it.value(), prefix.empty() ? it.key() : prefix + "." + it.key(), out);
  } else {
    out[prefix] = j.dump();
  }
}

std::optional<json> recorded_fingerprint(const fs::path& file) {
  if (!fs::exists(file)) return std::nullopt;
  try {
    return json::parse(read_text_file(file.string())).at("fingerprint");
  } catch (const std::exception&) {
    return std::nullopt;  // unreadable: treated as no record
  }
}

}  // namespace

std::string file_hash(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": cannot read");
  Hasher h;
  std::vector<char> block(1 << 20);
  while (in) {
    in.read(block.data(), static_cast<std::streamsize>(block.size()));
    const auto n = static_cast<size_t>(in.gcount());
    if (n > 0) h.words(block.data(), n);
  }
  if (in.bad()) throw InputError(path + ": read error");
  return h.hex();
}

std::string fingerprint_hash(const json& fingerprint) {
  const std::string text = fingerprint.dump();
  Hasher h;
  h.words(text.data(), text.size());
  return h.hex();
}

std::string model_dir_hash(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    const bool weights = name.find(".safetensors") != std::string::npos || name.find(".bin") != std::string::npos;
    if (e.is_regular_file() && (name == "config.json" || weights)) files.push_back(name);
  }
  std::sort(files.begin(), files.end());
  json parts = json::object();
  for (const auto& f : files) parts[f] = file_hash((fs::path(dir) / f).string());
  return fingerprint_hash(parts);
}

std::string fingerprint_diff(const json& before, const json& now, size_t limit) {
  std::map<std::string, std::string> a, b;
  flatten(before, "", a);
  flatten(now, "", b);
  std::vector<std::string> changes;
  for (const auto& [k, v] : b) {
    auto it = a.find(k);
    if (it == a.end()) changes.push_back(k + ": (none) -> " + v);
    else if (it->second != v) changes.push_back(k + ": " + it->second + " -> " + v);
  }
  for (const auto& [k, v] : a)
    if (!b.count(k)) changes.push_back(k + ": " + v + " -> (none)");
  std::string out;
  for (size_t i = 0; i < changes.size() && i < limit; ++i) out += (i ? "; " : "") + changes[i];
  if (changes.size() > limit) out += fmt::format("; and {} more", changes.size() - limit);
  return out;
}

bool stage_is_done(const std::string& dir, const json& fingerprint) {
  const fs::path root(dir);
  const auto recorded = recorded_fingerprint(root / "stage.json");
  return recorded && *recorded == json::parse(fingerprint.dump()) && fs::exists(root / "DONE.json") &&
         fs::exists(root / "model" / "config.json");
}

namespace {
StageAction prepare_stage_here(const std::string& name, const std::string& dir, const json& fingerprint, bool resume) {
  const fs::path root(dir);
  const json now = json::parse(fingerprint.dump());  // as it reads back from stage.json
  const auto recorded = recorded_fingerprint(root / "stage.json");
  const bool done = fs::exists(root / "DONE.json") && fs::exists(root / "model" / "config.json");
  const bool occupied = fs::exists(root) && !fs::is_empty(root);
  if (recorded && *recorded == now) {
    if (done) {
      spdlog::info("[{}] finished earlier with the same settings: reusing {}", name, (root / "model").string());
      return StageAction::kReuse;
    }
    if (resume && !latest_checkpoint(dir).empty()) return StageAction::kResume;
    if (occupied) spdlog::info("[{}] {} holds an unfinished run with these settings: starting afresh (--resume continues it)", name, dir);
  } else if (occupied) {
    const std::string why = recorded ? "its settings changed: " + fingerprint_diff(*recorded, now)
                                     : "it has no record of the settings it was trained with";
    spdlog::info("[{}] not reusing {} ({}): training it again", name, dir, why);
  }
  std::error_code ec;
  fs::remove_all(root, ec);
  if (ec) throw Error("cannot clear the stage directory " + dir + ": " + ec.message());
  fs::create_directories(root);
  write_text_atomic((root / "stage.json").string(),
                    json{{"stage", name}, {"hash", fingerprint_hash(now)}, {"fingerprint", now}}.dump(2) + "\n");
  return StageAction::kTrain;
}
}  // namespace

StageAction prepare_stage(const std::string& name, const std::string& dir, const json& fingerprint, bool resume) {
  Collective* w = world();
  if (!w) return prepare_stage_here(name, dir, fingerprint, resume);
  // Rank 0 decides and prepares the directory; the others follow its decision.
  const double mine = w->is_root() ? static_cast<double>(prepare_stage_here(name, dir, fingerprint, resume)) : 0.0;
  return static_cast<StageAction>(static_cast<int>(w->sum_over_ranks({mine})[0]));
}

FinishedStage read_finished_stage(const std::string& dir) {
  const auto path = (fs::path(dir) / "DONE.json").string();
  FinishedStage f;
  try {
    const auto done = json::parse(read_text_file(path));
    f.budget = Budget::from_json(done.value("budget", json::object()));
    if (f.budget.steps == 0) f.budget.steps = done.value("steps", int64_t{0});
    if (f.budget.seconds == 0) f.budget.seconds = done.value("seconds", 0.0);
    if (done.contains("data_end")) f.data_end = {done["data_end"].at("epoch").get<int64_t>(), done["data_end"].at("batch").get<int64_t>()};
    const auto stage = json::parse(read_text_file((fs::path(dir) / "stage.json").string()));
    f.fingerprint = stage.at("hash").get<std::string>();
  } catch (const json::exception& e) {
    throw CheckpointError(path + ": " + e.what());
  }
  return f;
}

}  // namespace distill
