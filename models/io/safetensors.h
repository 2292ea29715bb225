// The safetensors format: 8-byte little-endian header length, a JSON header mapping each name to
// {dtype, shape, data_offsets} (plus "__metadata__"), then the raw little-endian tensor bytes.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace distill {

struct TensorEntry {
  std::string dtype;           // safetensors dtype name: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL
  std::vector<int64_t> shape;  // dimensions; [] is a scalar
  uint64_t begin = 0;          // byte offset into the data section
  uint64_t end = 0;            // one past the last byte
};

// An opened, fully validated safetensors file. Tensors are read on demand.
class SafetensorsFile {
 public:
  // Reads and validates the header against the file size. Throws CheckpointError naming the file
  // (and the tensor, where one is at fault) on any inconsistency.
  explicit SafetensorsFile(std::string path);

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return entries_.count(name) > 0; }

  // A CPU tensor with the stored dtype and shape.
  at::Tensor load(const std::string& name) const;
  std::map<std::string, at::Tensor> load_all() const;

 private:
  std::string path_;
  uint64_t data_start_ = 0;
  std::map<std::string, TensorEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` (any device, any layout; stored contiguous on CPU) to `path` atomically, with
// __metadata__ {"format": "pt"} plus `metadata`. Throws Error on a duplicate name or unsupported dtype.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// The weights file of a model directory, in order of preference: model.safetensors,
// model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json.
std::string model_weights_file(const std::string& dir);

// All tensors of a model directory (model_weights_file): a safetensors file or a torch.save
// pytorch_model.bin (read by models/io/torch_bin.h, never unpickled by Python's rules), or the
// shards an index lists. Every shard is validated; a name the index lists but its shard lacks is
// an error.
std::map<std::string, at::Tensor> load_model_tensors(const std::string& dir);

// Writes model.safetensors, or shards of at most `max_shard_bytes` with an index when larger.
void save_model_tensors(const std::string& dir,
                        const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                        uint64_t max_shard_bytes = 2ull << 30);

}  // namespace distill
