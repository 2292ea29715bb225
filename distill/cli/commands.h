// Sub-commands of the distill binary. Each registers its options on the CLI11 app and returns
// the function that runs it once parsing succeeded (main sets up the runtime in between).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace distill::cli {

struct Command {
  CLI::App* app = nullptr;     // the parsed sub-command
  std::function<void()> run;   // throws distill::Error on bad input
};

// --no-bf16 on a sub-command that reads a run configuration (float32 whatever the CPU).
void add_no_bf16(CLI::App* sub, bool& flag);
// The overrides a job's configuration is read with: its --set ones, then those --output
// (output_dir) and --no-bf16 (training.bf16 and teacher.bf16 false) stand for.
std::vector<std::string> config_overrides(std::vector<std::string> set, const std::string& output, bool no_bf16);

Command add_inspect(CLI::App& app);
Command add_forward(CLI::App& app);
Command add_tokenizer(CLI::App& app);
Command add_generate(CLI::App& app);
Command add_train(CLI::App& app);
Command add_distill(CLI::App& app);
Command add_run(CLI::App& app);
Command add_stage(CLI::App& app);
Command add_compare(CLI::App& app);
Command add_sweep(CLI::App& app);
Command add_report(CLI::App& app);
Command add_eval(CLI::App& app);
Command add_config(CLI::App& app);
Command add_bench(CLI::App& app);
Command add_convert(CLI::App& app);
Command add_export(CLI::App& app);

}  // namespace distill::cli
