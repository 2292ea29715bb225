// PyTorch's pytorch_model.bin (torch.save's zip format, torch >= 1.6) read without Python and
// without pickle's risks: the archive's data.pkl runs on a small pickle machine that knows only
// what a state dict needs (collections.OrderedDict, torch._utils._rebuild_tensor_v2 and
// _rebuild_parameter, the typed storages, plain containers and scalars) and refuses any other
// global by name before anything is built, as torch.load(weights_only=True) does. It never calls
// anything: the few globals it accepts are interpreted, not looked up.
#pragma once

#include <ATen/Tensor.h>

#include <map>
#include <string>

namespace distill {

// Every tensor of `path` by name, as CPU tensors of the stored dtype. Views into a shared storage
// (offsets, strides, tied weights) come out with their own values; a storage is read once.
// Throws CheckpointError naming the file (and the tensor, record or global at fault).
std::map<std::string, at::Tensor> load_torch_bin(const std::string& path);

}  // namespace distill
