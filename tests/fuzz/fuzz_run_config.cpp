// Any bytes as a run configuration (YAML): a typed error or a configuration that round-trips.
#include "distill/config/run_config.h"
#include "models/errors.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = distill::fuzz::scratch_file(data, size, "run.yaml");
  try {
    auto c = distill::load_run_config(path);
    (void)distill::run_config_yaml(c);
  } catch (const distill::Error&) {
  }
  return 0;
}
