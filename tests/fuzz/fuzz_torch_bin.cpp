// Any bytes as a pytorch_model.bin: a typed CheckpointError or a state dict whose tensors all load.
#include "models/errors.h"
#include "models/io/torch_bin.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = distill::fuzz::scratch_file(data, size, "pytorch_model.bin");
  try {
    distill::load_torch_bin(path);
  } catch (const distill::Error&) {
  }
  return 0;
}
