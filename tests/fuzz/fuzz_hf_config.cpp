// Any bytes as a Hugging Face config.json: a typed error or a configuration that validates.
#include "models/errors.h"
#include "models/io/hf_config.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = distill::fuzz::scratch_file(data, size, "config.json");
  try {
    auto c = distill::read_hf_config(path);
    c.validate("fuzz");
  } catch (const distill::Error&) {
  }
  return 0;
}
