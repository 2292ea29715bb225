// distill: compress a sparse Switch Transformer into a dense T5 by distillation.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "distill/cli/commands.h"
#include "distill/process/distributed.h"
#include "distill/process/interrupt.h"
#include "distill/process/launch.h"
#include "distill/process/runtime.h"
#include "distill/training/trainer.h"
#include "models/errors.h"

int main(int argc, char** argv) {
  distill::interrupt::start_watcher();  // before any thread starts: see distill/process/interrupt.h
  CLI::App app{"distill: compress a sparse Switch Transformer into a dense T5 and report what was kept"};
  app.require_subcommand(1);
  int threads = 0, nproc = 0;
  app.add_option("--threads", threads, "Intra-op threads (default: cores available)")->check(CLI::NonNegativeNumber);
  app.add_option("--nproc", nproc, "Run as a data-parallel job of N ranks on this machine (torchrun's environment "
                                   "does the same across machines)")
      ->check(CLI::PositiveNumber);
  std::vector<distill::cli::Command> commands = {
      distill::cli::add_inspect(app),
      distill::cli::add_forward(app),
      distill::cli::add_convert(app),
      distill::cli::add_export(app),
      distill::cli::add_tokenizer(app),
      distill::cli::add_generate(app),
      distill::cli::add_train(app),
      distill::cli::add_distill(app),
      distill::cli::add_eval(app),
      distill::cli::add_run(app),
      distill::cli::add_compare(app),
      distill::cli::add_sweep(app),
      distill::cli::add_report(app),
      distill::cli::add_stage(app),
      distill::cli::add_config(app),
      distill::cli::add_bench(app),
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  // Logs go to stderr: stdout carries results (JSON, token ids, reports) that other tools parse.
  spdlog::set_default_logger(spdlog::stderr_color_mt("distill"));
  // A rank leaving on an error must not destroy its process group: a collective may still be
  // running on Gloo's thread, waiting for a stopped peer, and the destructor would join it.
  const auto leave = [](int code) {
    if (code != 0 && distill::world()) {
      std::cout.flush();
      std::cerr.flush();
      spdlog::shutdown();
      std::_Exit(code);
    }
    return code;
  };
  try {
    if (nproc > 1) {
      std::vector<std::string> args;
      for (int i = 0; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--nproc" || a == "--threads") {  // the launcher gives each rank its --threads
          ++i;
          continue;
        }
        if (a.rfind("--nproc=", 0) == 0 || a.rfind("--threads=", 0) == 0) continue;
        args.push_back(a);
      }
      return distill::launch_local_ranks(args, nproc, threads > 0 ? threads : std::max(1, distill::available_cores() / nproc));
    }
    const auto env = distill::WorldEnv::from_environment();
    if (env.world_size > 1) {
      if (env.rank != 0) spdlog::set_level(spdlog::level::warn);  // rank 0 speaks for the job
      distill::set_world(std::make_unique<distill::Collective>(env));
    }
    distill::init_runtime(threads);
    for (auto& c : commands)
      if (c.app->parsed()) c.run();
  } catch (const distill::InterruptedError& e) {
    std::cerr << e.what() << "\n";
    return leave(130);
  } catch (const distill::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return leave(1);
  } catch (const std::filesystem::filesystem_error& e) {
    // An output or input path the system refuses (read-only, a file where a directory must be):
    // bad input, named by the path.
    std::cerr << "error: " << e.path1().string() << ": " << e.code().message() << " (" << e.what() << ")\n";
    return leave(1);
  } catch (const c10::Error& e) {
    std::cerr << "error: LibTorch: " << e.what_without_backtrace() << "\n";
    return leave(3);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return leave(3);
  }
  return 0;
}
