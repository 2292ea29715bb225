// Any bytes as a safetensors file: a typed CheckpointError or a file whose tensors all load.
#include "models/errors.h"
#include "models/io/safetensors.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = distill::fuzz::scratch_file(data, size, "model.safetensors");
  try {
    distill::SafetensorsFile f(path);
    for (const auto& [name, entry] : f.entries()) f.load(name);
  } catch (const distill::Error&) {
  }
  return 0;
}
