#include "models/io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include "models/io/atomic_file.h"
#include "models/io/read_only_file.h"
#include "models/io/torch_bin.h"
#include "models/errors.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");

namespace distill {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// safetensors caps the header at 100 MB; a larger length means a corrupt or foreign file.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeInfo {
  const char* name;
  at::ScalarType type;
  size_t bytes;
};

constexpr DtypeInfo kDtypes[] = {
    {"F64", at::kDouble, 8}, {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2},
    {"BF16", at::kBFloat16, 2}, {"I64", at::kLong, 8}, {"I32", at::kInt, 4},
    {"I16", at::kShort, 2}, {"I8", at::kChar, 1}, {"U8", at::kByte, 1}, {"BOOL", at::kBool, 1},
};

const DtypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

const DtypeInfo& dtype_of(at::ScalarType t, const std::string& tensor) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d;
  throw Error("tensor " + tensor + ": dtype " + std::string(c10::toString(t)) +
              " cannot be stored in safetensors");
}

std::string known_dtypes() {
  std::string s;
  for (const auto& d : kDtypes) s += std::string(s.empty() ? "" : ", ") + d.name;
  return s;
}

// Finds a key given twice at the top level of a JSON object, without building anything.
struct TopLevelKeys : nlohmann::json_sax<json> {
  int depth = 0;
  std::set<std::string> seen;
  std::string duplicate;
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return ++depth, true; }
  bool end_object() override { return --depth, true; }
  bool start_array(std::size_t) override { return ++depth, true; }
  bool end_array() override { return --depth, true; }
  bool key(string_t& k) override {
    if (depth == 1 && !seen.insert(k).second && duplicate.empty()) duplicate = k;
    return true;
  }
  std::string error;  // the parser's message, when the header is not JSON
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    error = e.what();
    return false;
  }
};

}  // namespace

SafetensorsFile::SafetensorsFile(std::string path) : path_(std::move(path)) {
  const ReadOnlyFile file(path_, "a safetensors file");
  const uint64_t file_size = file.size();
  if (file_size < 8) {
    throw CheckpointError(path_ + ": not a safetensors file: " + std::to_string(file_size) +
                          " bytes, shorter than the 8-byte header length");
  }
  uint64_t header_len = 0;
  file.read(&header_len, 8, 0);
  if (header_len > kMaxHeaderBytes) {
    throw CheckpointError(path_ + ": header length " + std::to_string(header_len) + " is over the cap of " +
                          std::to_string(kMaxHeaderBytes) + " bytes: not a safetensors file, or a corrupt one");
  }
  if (8 + header_len > file_size) {
    throw CheckpointError(path_ + ": header length " + std::to_string(header_len) +
                          " runs past the end of the file (" + std::to_string(file_size) +
                          " bytes): truncated or not a safetensors file");
  }
  std::string header(header_len, '\0');
  file.read(header.data(), header_len, 8);
  data_start_ = 8 + header_len;
  const uint64_t data_size = file_size - data_start_;

  // nlohmann keeps the last of duplicate keys, so a SAX pass looks for them first (linear; the
  // callback parser is quadratic in the number of tensors).
  json j;
  try {
    TopLevelKeys keys;
    if (!json::sax_parse(header, &keys)) throw CheckpointError(path_ + ": header is not valid JSON: " + keys.error);
    if (!keys.duplicate.empty()) throw CheckpointError(path_ + ": tensor " + keys.duplicate + " appears twice in the header");
    j = json::parse(header);
  } catch (const json::exception& e) {
    throw CheckpointError(path_ + ": header is not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw CheckpointError(path_ + ": header is not a JSON object");

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw CheckpointError(path_ + ": __metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          throw CheckpointError(path_ + ": __metadata__ value for \"" + m.key() + "\" must be a string");
        }
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = path_ + ": tensor " + name;
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets")) {
      throw CheckpointError(where + ": entry must be an object with dtype, shape and data_offsets");
    }
    TensorEntry e;
    if (!v["dtype"].is_string()) throw CheckpointError(where + ": dtype must be a string");
    e.dtype = v["dtype"].get<std::string>();
    const DtypeInfo* info = find_dtype(e.dtype);
    if (!info) throw CheckpointError(where + ": unknown dtype \"" + e.dtype + "\" (expected one of " + known_dtypes() + ")");
    if (!v["shape"].is_array()) throw CheckpointError(where + ": shape must be an array");
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) throw CheckpointError(where + ": shape must hold non-negative integers");
      const uint64_t n = d.get<uint64_t>();
      // Every dimension and the byte count must fit int64 (LibTorch's sizes) without wrapping.
      if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) || __builtin_mul_overflow(numel, n, &numel)) {
        throw CheckpointError(where + ": shape " + v["shape"].dump() + " is too large (its element count overflows 64 bits)");
      }
      e.shape.push_back(static_cast<int64_t>(n));
    }
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(info->bytes), &bytes) ||
        bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      throw CheckpointError(where + ": shape " + v["shape"].dump() + " is too large (" + e.dtype + " bytes overflow 64 bits)");
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      throw CheckpointError(where + ": data_offsets must be [begin, end] with non-negative integers");
    }
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    if (e.begin > e.end || e.end > data_size) {
      throw CheckpointError(where + ": data_offsets [" + std::to_string(e.begin) + ", " +
                            std::to_string(e.end) + "] out of bounds of the " +
                            std::to_string(data_size) + "-byte data section");
    }
    if (e.end - e.begin != bytes) {
      throw CheckpointError(where + ": " + std::to_string(e.end - e.begin) + " bytes do not match " +
                            e.dtype + " " + v["shape"].dump() + " (" + std::to_string(bytes) + " bytes)");
    }
    entries_.emplace(name, std::move(e));
  }

  // Byte ranges must tile the data section: no overlap, no hole.
  std::vector<std::pair<const std::string*, const TensorEntry*>> by_offset;
  for (const auto& [name, e] : entries_) by_offset.emplace_back(&name, &e);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto& a, const auto& b) {
    return std::tie(a.second->begin, a.second->end) < std::tie(b.second->begin, b.second->end);
  });
  uint64_t cursor = 0;
  const std::string* prev = nullptr;
  for (const auto& [name, e] : by_offset) {
    if (e->begin < cursor) {
      throw CheckpointError(path_ + ": tensor " + *name + " overlaps tensor " + *prev + " in the data section");
    }
    if (e->begin > cursor) {
      throw CheckpointError(path_ + ": hole in the data section before tensor " + *name);
    }
    cursor = e->end;
    prev = name;
  }
  if (cursor != data_size) {
    throw CheckpointError(path_ + ": " + std::to_string(data_size - cursor) +
                          " trailing bytes after the last tensor");
  }
}

at::Tensor SafetensorsFile::load(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw CheckpointError(path_ + ": no tensor named " + name);
  const TensorEntry& e = it->second;
  at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(find_dtype(e.dtype)->type));
  if (e.end > e.begin) ReadOnlyFile(path_, "a safetensors file").read(t.data_ptr(), e.end - e.begin, data_start_ + e.begin);
  return t;
}

std::map<std::string, at::Tensor> SafetensorsFile::load_all() const {
  std::map<std::string, at::Tensor> out;
  const ReadOnlyFile file(path_, "a safetensors file");
  for (const auto& [name, e] : entries_) {
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(find_dtype(e.dtype)->type));
    if (e.end > e.begin) file.read(t.data_ptr(), e.end - e.begin, data_start_ + e.begin);
    out.emplace(name, std::move(t));
  }
  return out;
}

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, at::Tensor>> sorted;
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__" || !names.insert(name).second) {
      throw Error(path + ": tensor name " + name + " is reserved or given twice");
    }
    sorted.emplace_back(name, t.detach().to(at::kCPU).contiguous());
  }
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.first < b.first; });

  json header = json::object();
  json meta = json::object();
  for (const auto& [k, v] : metadata) meta[k] = v;
  meta["format"] = "pt";  // Hugging Face refuses files without it
  header["__metadata__"] = meta;
  uint64_t offset = 0;
  for (const auto& [name, t] : sorted) {
    const DtypeInfo& d = dtype_of(t.scalar_type(), name);
    uint64_t n = static_cast<uint64_t>(t.numel()) * d.bytes;
    header[name] = {{"dtype", d.name}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keep the data section 8-byte aligned
  uint64_t len = text.size();

  write_file_atomic(path, [&](std::ostream& out) {
    out.write(reinterpret_cast<const char*>(&len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& [name, t] : sorted) {
      out.write(static_cast<const char*>(t.data_ptr()),
                static_cast<std::streamsize>(t.numel() * t.element_size()));
    }
  });
}

namespace {

// The weight_map of a shard index (name -> shard file beside the index), by shard.
std::map<std::string, std::vector<std::string>> read_shard_index(const fs::path& index) {
  json j;
  try {
    j = json::parse(read_text_file(index.string()));
  } catch (const json::exception& e) {
    throw CheckpointError(index.string() + ": not valid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
    throw CheckpointError(index.string() + ": expected an object with a \"weight_map\" of name -> shard file");
  }
  std::map<std::string, std::vector<std::string>> by_shard;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string()) throw CheckpointError(index.string() + ": weight_map[" + it.key() + "] must be a file name");
    const std::string shard = it.value().get<std::string>();
    // A shard is a plain file beside the index: no path may lead out of the model directory.
    if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
        shard.find('\\') != std::string::npos) {
      throw CheckpointError(index.string() + ": weight_map[" + it.key() + "] is \"" + shard +
                            "\"; a shard must be a plain file name in the model directory");
    }
    by_shard[shard].push_back(it.key());
  }
  return by_shard;
}

[[noreturn]] void missing_from_shard(const std::string& shard, const std::string& name, const fs::path& index) {
  throw CheckpointError(shard + ": tensor " + name + " is listed in " + index.string() + " but missing from the shard");
}

}  // namespace

std::string model_weights_file(const std::string& dir) {
  for (const char* name : {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"}) {
    if (fs::exists(fs::path(dir) / name)) return (fs::path(dir) / name).string();
  }
  throw CheckpointError(dir + ": no model.safetensors, pytorch_model.bin or shard index (.index.json) in this directory");
}

std::map<std::string, at::Tensor> load_model_tensors(const std::string& dir) {
  const fs::path weights = model_weights_file(dir);
  const std::string file = weights.filename().string();
  if (file == "model.safetensors") return SafetensorsFile(weights.string()).load_all();
  if (file == "pytorch_model.bin") return load_torch_bin(weights.string());
  std::map<std::string, at::Tensor> out;
  const bool safetensors = file == "model.safetensors.index.json";
  for (const auto& [shard, names] : read_shard_index(weights)) {
    const std::string shard_path = (weights.parent_path() / shard).string();
    if (safetensors) {
      SafetensorsFile f(shard_path);
      for (const auto& name : names) {
        if (!f.contains(name)) missing_from_shard(f.path(), name, weights);
        out.emplace(name, f.load(name));
      }
    } else {
      auto tensors = load_torch_bin(shard_path);
      for (const auto& name : names) {
        auto it = tensors.find(name);
        if (it == tensors.end()) missing_from_shard(shard_path, name, weights);
        out.emplace(name, std::move(it->second));
      }
    }
  }
  return out;
}

void save_model_tensors(const std::string& dir,
                        const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                        uint64_t max_shard_bytes) {
  uint64_t total = 0;
  for (const auto& [n, t] : tensors) total += static_cast<uint64_t>(t.numel() * t.element_size());
  const fs::path root(dir);
  if (total <= max_shard_bytes) {
    save_safetensors((root / "model.safetensors").string(), tensors);
    return;
  }
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards(1);
  uint64_t in_shard = 0;
  for (const auto& nt : tensors) {
    uint64_t n = static_cast<uint64_t>(nt.second.numel() * nt.second.element_size());
    if (in_shard > 0 && in_shard + n > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(nt);
    in_shard += n;
  }
  json weight_map = json::object();
  char buf[64];
  for (size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    save_safetensors((root / buf).string(), shards[i]);
    for (const auto& nt : shards[i]) weight_map[nt.first] = buf;
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  write_text_atomic((root / "model.safetensors.index.json").string(), index.dump(2) + "\n");
}

}  // namespace distill
