// Sub-commands of the distill binary. Each registers its options on the CLI11 app and returns
// the function that runs it once parsing succeeded (main sets up the runtime in between).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <vector>

namespace distill::cli {

struct Command {
  CLI::App* app = nullptr;     // the parsed sub-command
  std::function<void()> run;   // throws distill::Error on bad input
};

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
