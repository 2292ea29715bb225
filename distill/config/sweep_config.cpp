#include "distill/config/sweep_config.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <set>
#include <sstream>

#include "models/errors.h"

namespace distill {
namespace fs = std::filesystem;

namespace {

std::string at(const std::string& file, const YAML::Node& n) {
  const auto m = n.Mark();
  return m.line >= 0 ? file + ":" + std::to_string(m.line + 1) : file;
}

// Unknown keys of `map` (with the closest of `known`) become errors.
void check_keys(const YAML::Node& map, const std::string& prefix, const std::vector<std::string>& known,
                const std::string& file, std::vector<std::string>& errors) {
  for (auto it = map.begin(); it != map.end(); ++it) {
    const std::string key = it->first.as<std::string>("");
    if (std::find(known.begin(), known.end(), key) != known.end()) continue;
    const std::string best = closest_key(key, known);
    errors.push_back(at(file, it->first) + ": unknown key \"" + prefix + key + "\"" +
                     (best.empty() ? "" : " (did you mean \"" + prefix + best + "\"?)"));
  }
}

bool valid_name(const std::string& name) {
  return !name.empty() && name.size() <= 64 && name != "stages" && name != "." && name != ".." &&
         name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") == std::string::npos;
}

}  // namespace

bool is_sweep_file(const std::string& path) {
  try {
    const YAML::Node root = YAML::LoadFile(path);
    return root.IsMap() && root["sweep"];
  } catch (const YAML::Exception&) {
    return false;
  }
}

SweepConfig load_sweep_config(const std::string& path, const std::vector<std::string>& overrides) {
  SweepConfig out;
  out.base = load_run_config(path, overrides, {"sweep"});  // the file's own problems first, as a run's
  const YAML::Node root = YAML::LoadFile(path);            // parses: load_run_config has read it
  const YAML::Node sweep = root["sweep"];
  std::vector<std::string> errors;
  if (!sweep || !sweep.IsMap()) throw ConfigError(path + ": a sweep file needs a `sweep` mapping with its `variants`");
  check_keys(sweep, "sweep.", {"variants", "reference"}, path, errors);
  const YAML::Node list = sweep["variants"];
  if (!list || !list.IsSequence() || list.size() == 0) {
    throw ConfigError(at(path, sweep) + ": sweep.variants must be a list of variants (name, set)");
  }
  if (list.size() > 200) throw ConfigError(at(path, list) + ": sweep.variants lists " + std::to_string(list.size()) + " variants; at most 200");
  std::set<std::string> names;
  for (size_t i = 0; i < list.size(); ++i) {
    const YAML::Node v = list[i];
    const std::string where = at(path, v), key = "sweep.variants[" + std::to_string(i) + "]";
    if (!v.IsMap()) {
      errors.push_back(where + ": " + key + " must be a mapping (name, set, label, paper_percent)");
      continue;
    }
    check_keys(v, key + ".", {"name", "label", "set", "paper_percent"}, path, errors);
    SweepVariant variant;
    try {
      variant.name = v["name"] ? v["name"].as<std::string>() : "";
      variant.label = v["label"] ? v["label"].as<std::string>() : variant.name;
      if (const auto s = v["set"]) {
        if (s.IsScalar()) variant.set.push_back(s.as<std::string>());
        else if (s.IsSequence()) for (const auto& e : s) variant.set.push_back(e.as<std::string>());
        else errors.push_back(at(path, s) + ": " + key + ".set must be a list of KEY=VALUE strings");
      }
      if (const auto p = v["paper_percent"]) variant.paper_percent = p.as<double>();
    } catch (const YAML::Exception&) {
      errors.push_back(where + ": " + key + ": name and label must be strings, set a list of strings, paper_percent a number");
      continue;
    }
    if (!valid_name(variant.name)) {
      errors.push_back(where + ": " + key + ".name \"" + variant.name +
                       "\" must be 1-64 letters, digits, '-', '_' or '.' (it names the variant's directory), not \"stages\"");
      continue;
    }
    if (!names.insert(variant.name).second) {
      errors.push_back(where + ": " + key + ".name \"" + variant.name + "\" is given twice; names must differ");
      continue;
    }
    bool own_dir = false;
    for (const auto& o : variant.set) own_dir |= o.substr(0, o.find('=')) == "output_dir";
    if (own_dir) {
      errors.push_back(where + ": " + key + ".set sets output_dir; a variant is written to OUTPUT/" + variant.name +
                       " (set output_dir for the whole sweep)");
      continue;
    }
    std::vector<std::string> all = overrides;
    all.insert(all.end(), variant.set.begin(), variant.set.end());
    try {
      variant.config = load_run_config(path, all, {"sweep"});
    } catch (const ConfigError& e) {
      errors.push_back("variant \"" + variant.name + "\" (" + where + "): " + e.what());
      continue;
    }
    variant.config.output_dir = (fs::path(out.base.output_dir) / variant.name).string();
    if (variant.config.stages_dir.empty()) variant.config.stages_dir = (fs::path(out.base.output_dir) / "stages").string();
    out.variants.push_back(std::move(variant));
  }
  if (const auto r = sweep["reference"]) {
    out.reference = r.IsScalar() ? r.as<std::string>() : "";
    if (!names.count(out.reference)) {
      errors.push_back(at(path, r) + ": sweep.reference \"" + out.reference + "\" names no variant");
    }
  } else if (!out.variants.empty()) {
    out.reference = out.variants.front().name;
  }
  if (!errors.empty()) {
    std::ostringstream msg;
    msg << path << ": " << errors.size() << " problem" << (errors.size() > 1 ? "s" : "") << " in the sweep:";
    for (const auto& e : errors) msg << "\n  " << e;
    throw ConfigError(msg.str());
  }
  return out;
}

}  // namespace distill
