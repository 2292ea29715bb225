// A sweep: one base experiment and named variants of it (each a list of --set style overrides),
// read from one YAML file whose `sweep` section lists the variants and whose other keys are the
// base run configuration.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "distill/config/run_config.h"

namespace distill {

struct SweepVariant {
  std::string name;                   // letters, digits, - and _: its directory under OUTPUT
  std::string label;                  // how tables and plots name it; default: the name
  std::vector<std::string> set;       // overrides of the base, as --set takes them ("a.b=value")
  std::optional<double> paper_percent;  // the paper's gain preserved for this row, drawn for reference
  RunConfig config;                   // the base with `set` applied: output_dir OUTPUT/<name>, the
                                      // stages shared through OUTPUT/stages (unless stages_dir is set)
};

struct SweepConfig {
  RunConfig base;                     // the file's run configuration (with the command line's --set)
  std::vector<SweepVariant> variants;
  std::string reference;              // sweep.reference: the variant every other is compared with,
                                      // paired by seed; default the first
};

// Reads and validates a sweep file: the sweep section strictly (unknown keys with "did you mean",
// a name given twice), and every variant's resolved configuration; all problems at once, each
// naming the variant and file:line (ConfigError). `overrides` apply to the base and so to every
// variant, before the variant's own.
SweepConfig load_sweep_config(const std::string& path, const std::vector<std::string>& overrides = {});

// Whether `path` is a YAML mapping with a top-level `sweep` key (false when it cannot be read:
// the run configuration's reader then says why).
bool is_sweep_file(const std::string& path);

}  // namespace distill
