#include "models/io/torch_bin.h"

#include <ATen/ATen.h>

#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <unordered_map>
#include <vector>

#include "models/errors.h"
#include "models/io/read_only_file.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "torch checkpoint I/O assumes a little-endian host");

namespace distill {
namespace {

// A state dict's pickle holds ~100 bytes per tensor; anything near this is not one.
constexpr uint64_t kMaxPickleBytes = 1ull << 30;
constexpr uint64_t kMaxZipEntries = 1ull << 22;
constexpr size_t kMaxDepth = 10'000;  // nested containers and stack entries, against pickle bombs

uint16_t u16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }
uint32_t u32(const unsigned char* p) { return static_cast<uint32_t>(u16(p)) | static_cast<uint32_t>(u16(p + 2)) << 16; }
uint64_t u64(const unsigned char* p) { return static_cast<uint64_t>(u32(p)) | static_cast<uint64_t>(u32(p + 4)) << 32; }

// ---- the zip archive (stored entries only, as torch.save writes them; zip64 as it writes past 4 GB)

struct ZipEntry {
  uint64_t data_offset = 0;  // of the entry's bytes in the file
  uint64_t size = 0;
};

class ZipArchive {
 public:
  explicit ZipArchive(const ReadOnlyFile& file) : file_(file) { read_central_directory(); }

  const ZipEntry* find(const std::string& name) const {
    auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : &it->second;
  }
  const std::unordered_map<std::string, ZipEntry>& entries() const { return entries_; }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw CheckpointError(file_.path() + ": not a readable torch.save zip archive: " + what);
  }

  void read_central_directory() {
    const uint64_t size = file_.size();
    if (size < 22) fail("shorter than a zip end record");
    // The end-of-central-directory record is in the last 22 + 65535 bytes (its comment).
    const uint64_t tail_len = std::min<uint64_t>(size, 22 + 65535);
    std::vector<unsigned char> tail(tail_len);
    file_.read(tail.data(), tail_len, size - tail_len);
    int64_t eocd = -1;
    for (int64_t i = static_cast<int64_t>(tail_len) - 22; i >= 0; --i) {
      if (u32(&tail[i]) == 0x06054b50) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) fail("no end-of-central-directory record");
    uint64_t count = u16(&tail[eocd + 10]);
    uint64_t cd_size = u32(&tail[eocd + 12]);
    uint64_t cd_offset = u32(&tail[eocd + 16]);
    if (count == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
      // zip64: a locator just before the end record points at the zip64 end record.
      const uint64_t eocd_at = size - tail_len + static_cast<uint64_t>(eocd);
      if (eocd_at < 20) fail("zip64 locator missing");
      unsigned char loc[20];
      file_.read(loc, 20, eocd_at - 20);
      if (u32(loc) != 0x07064b50) fail("zip64 locator missing");
      const uint64_t rec_at = u64(loc + 8);
      if (rec_at > size || size - rec_at < 56) fail("zip64 end record out of the file");
      unsigned char rec[56];
      file_.read(rec, 56, rec_at);
      if (u32(rec) != 0x06064b50) fail("bad zip64 end record");
      count = u64(rec + 32);
      cd_size = u64(rec + 40);
      cd_offset = u64(rec + 48);
    }
    if (count > kMaxZipEntries) fail(std::to_string(count) + " entries, more than " + std::to_string(kMaxZipEntries));
    if (cd_offset > size || cd_size > size - cd_offset || cd_size < 46 * count) fail("central directory out of the file");
    std::vector<unsigned char> cd(cd_size);
    file_.read(cd.data(), cd_size, cd_offset);
    size_t p = 0;
    for (uint64_t i = 0; i < count; ++i) {
      if (p + 46 > cd.size() || u32(&cd[p]) != 0x02014b50) fail("bad central directory entry " + std::to_string(i));
      const uint16_t method = u16(&cd[p + 10]);
      uint64_t csize = u32(&cd[p + 20]), usize = u32(&cd[p + 24]);
      const size_t name_len = u16(&cd[p + 28]), extra_len = u16(&cd[p + 30]), comment_len = u16(&cd[p + 32]);
      uint64_t local = u32(&cd[p + 42]);
      if (p + 46 + name_len + extra_len + comment_len > cd.size()) fail("central directory entry " + std::to_string(i) + " overruns it");
      const std::string name(reinterpret_cast<const char*>(&cd[p + 46]), name_len);
      // zip64 extra field: the 64-bit values of the fields saturated above, in this order.
      for (size_t e = p + 46 + name_len; e + 4 <= p + 46 + name_len + extra_len;) {
        const uint16_t id = u16(&cd[e]), len = u16(&cd[e + 2]);
        if (e + 4 + len > p + 46 + name_len + extra_len) fail("entry " + name + ": extra field overruns it");
        if (id == 0x0001) {
          size_t q = e + 4;
          auto next = [&](uint64_t& field) {
            if (q + 8 > e + 4 + len) fail("entry " + name + ": short zip64 extra field");
            field = u64(&cd[q]);
            q += 8;
          };
          if (usize == 0xffffffff) next(usize);
          if (csize == 0xffffffff) next(csize);
          if (local == 0xffffffff) next(local);
        }
        e += 4 + len;
      }
      p += 46 + name_len + extra_len + comment_len;
      if (method != 0) fail("entry " + name + " is compressed (method " + std::to_string(method) + "); torch.save stores entries uncompressed");
      if (csize != usize) fail("entry " + name + ": stored sizes differ");
      if (local > size || size - local < 30) fail("entry " + name + ": local header out of the file");
      unsigned char lh[30];
      file_.read(lh, 30, local);
      if (u32(lh) != 0x04034b50) fail("entry " + name + ": bad local header");
      const uint64_t data = local + 30 + u16(lh + 26) + u16(lh + 28);
      if (data > size || usize > size - data) fail("entry " + name + " runs past the end of the file (truncated?)");
      if (!entries_.emplace(name, ZipEntry{data, usize}).second) fail("entry " + name + " appears twice");
    }
  }

  const ReadOnlyFile& file_;
  std::unordered_map<std::string, ZipEntry> entries_;
};

// ---- the pickle machine

struct StorageRef {
  std::string key;          // record name under <archive>/data/
  at::ScalarType dtype;
  int64_t numel = 0;        // elements
};

struct TensorRef {
  std::shared_ptr<StorageRef> storage;
  int64_t offset = 0;
  std::vector<int64_t> size, stride;
};

struct Value;
using ValuePtr = std::shared_ptr<Value>;
struct Value {
  enum class Kind { kNone, kBool, kInt, kFloat, kString, kBytes, kTuple, kList, kDict, kGlobal, kStorage, kTensor } kind;
  int64_t i = 0;
  double f = 0;
  std::string s;                                       // string, bytes, global "module.name"
  std::vector<ValuePtr> items;                         // tuple, list
  std::vector<std::pair<ValuePtr, ValuePtr>> entries;  // dict, in insertion order
  std::shared_ptr<StorageRef> storage;
  std::shared_ptr<TensorRef> tensor;
};

ValuePtr make(Value::Kind k) {
  auto v = std::make_shared<Value>();
  v->kind = k;
  return v;
}

const char* kind_name(Value::Kind k) {
  switch (k) {
    case Value::Kind::kNone: return "None";
    case Value::Kind::kBool: return "a bool";
    case Value::Kind::kInt: return "an int";
    case Value::Kind::kFloat: return "a float";
    case Value::Kind::kString: return "a string";
    case Value::Kind::kBytes: return "bytes";
    case Value::Kind::kTuple: return "a tuple";
    case Value::Kind::kList: return "a list";
    case Value::Kind::kDict: return "a dict";
    case Value::Kind::kGlobal: return "a global";
    case Value::Kind::kStorage: return "a storage";
    case Value::Kind::kTensor: return "a tensor";
  }
  return "?";
}

const std::unordered_map<std::string, at::ScalarType>& storage_types() {
  static const std::unordered_map<std::string, at::ScalarType> m = {
      {"torch.FloatStorage", at::kFloat},   {"torch.DoubleStorage", at::kDouble}, {"torch.HalfStorage", at::kHalf},
      {"torch.BFloat16Storage", at::kBFloat16}, {"torch.LongStorage", at::kLong}, {"torch.IntStorage", at::kInt},
      {"torch.ShortStorage", at::kShort},   {"torch.CharStorage", at::kChar},     {"torch.ByteStorage", at::kByte},
      {"torch.BoolStorage", at::kBool},
  };
  return m;
}

bool allowed_global(const std::string& g) {
  return g == "collections.OrderedDict" || g == "torch._utils._rebuild_tensor_v2" ||
         g == "torch._utils._rebuild_parameter" || storage_types().count(g) > 0;
}

class Unpickler {
 public:
  Unpickler(const std::string& where, const std::vector<unsigned char>& data) : where_(where), data_(data) {}

  ValuePtr run() {
    while (true) {
      if (pos_ >= data_.size()) fail("ends without STOP");
      const size_t at = pos_;
      const unsigned char op = data_[pos_++];
      switch (op) {
        case 0x80: take(1); break;  // PROTO
        case 0x95: take(8); break;  // FRAME
        case '}': push(make(Value::Kind::kDict)); break;
        case ']': push(make(Value::Kind::kList)); break;
        case ')': push(make(Value::Kind::kTuple)); break;
        case '(':
          if (marks_.size() >= kMaxDepth) fail("nested too deeply");
          marks_.push_back(stack_.size());
          break;
        case 't': case 'l': {
          auto v = make(op == 't' ? Value::Kind::kTuple : Value::Kind::kList);
          v->items = pop_mark();
          push(v);
          break;
        }
        case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
          const size_t n = op - 0x84u;
          if (stack_.size() < n) fail("stack underflow");
          auto v = make(Value::Kind::kTuple);
          v->items.assign(stack_.end() - static_cast<std::ptrdiff_t>(n), stack_.end());
          stack_.resize(stack_.size() - n);
          push(v);
          break;
        }
        case 'a': {
          auto x = pop();
          list_of(top())->items.push_back(x);
          break;
        }
        case 'e': {
          auto xs = pop_mark();
          auto& l = list_of(top())->items;
          l.insert(l.end(), xs.begin(), xs.end());
          break;
        }
        case 'd': {
          auto xs = pop_mark();
          auto v = make(Value::Kind::kDict);
          if (xs.size() % 2) fail("DICT with an odd number of items");
          for (size_t i = 0; i < xs.size(); i += 2) v->entries.emplace_back(xs[i], xs[i + 1]);
          push(v);
          break;
        }
        case 's': {
          auto val = pop();
          auto key = pop();
          dict_of(top())->entries.emplace_back(key, val);
          break;
        }
        case 'u': {
          auto xs = pop_mark();
          if (xs.size() % 2) fail("SETITEMS with an odd number of items");
          auto d = dict_of(top());
          for (size_t i = 0; i < xs.size(); i += 2) d->entries.emplace_back(xs[i], xs[i + 1]);
          break;
        }
        case 'N': push(make(Value::Kind::kNone)); break;
        case 0x88: case 0x89: {
          auto v = make(Value::Kind::kBool);
          v->i = op == 0x88;
          push(v);
          break;
        }
        case 'J': push_int(static_cast<int32_t>(u32(take(4)))); break;
        case 'K': push_int(*take(1)); break;
        case 'M': push_int(u16(take(2))); break;
        case 0x8a: {  // LONG1: n little-endian two's complement bytes
          const size_t n = *take(1);
          if (n > 8) fail("integer wider than 64 bits");
          const unsigned char* b = take(n);
          uint64_t x = 0;
          for (size_t k = 0; k < n; ++k) x |= static_cast<uint64_t>(b[k]) << (8 * k);
          if (n > 0 && n < 8 && (b[n - 1] & 0x80)) x |= ~uint64_t{0} << (8 * n);
          push_int(static_cast<int64_t>(x));
          break;
        }
        case 'G': {  // BINFLOAT, big-endian
          const unsigned char* b = take(8);
          uint64_t bits = 0;
          for (int k = 0; k < 8; ++k) bits = bits << 8 | b[k];
          auto v = make(Value::Kind::kFloat);
          std::memcpy(&v->f, &bits, 8);
          push(v);
          break;
        }
        case 'X': push_string(Value::Kind::kString, u32(take(4))); break;
        case 0x8c: push_string(Value::Kind::kString, *take(1)); break;
        case 0x8d: push_string(Value::Kind::kString, u64(take(8))); break;
        case 'B': push_string(Value::Kind::kBytes, u32(take(4))); break;
        case 'C': push_string(Value::Kind::kBytes, *take(1)); break;
        case 'c': {  // GLOBAL "module\nname\n"
          const std::string module = line(), name = line();
          push_global(module + "." + name, at);
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          auto name = pop(), module = pop();
          if (module->kind != Value::Kind::kString || name->kind != Value::Kind::kString) fail("STACK_GLOBAL needs two strings");
          push_global(module->s + "." + name->s, at);
          break;
        }
        case 'R': {
          auto args = pop();
          auto fn = pop();
          push(reduce(fn, args));
          break;
        }
        case 'Q': push(persistent_load(pop())); break;
        case 'b': {  // BUILD: only an OrderedDict's attributes (a state dict's _metadata), dropped
          pop();
          if (top()->kind != Value::Kind::kDict) fail("BUILD on " + std::string(kind_name(top()->kind)) + " is not supported");
          break;
        }
        case 'q': memo_[*take(1)] = top(); break;
        case 'r': memo_[u32(take(4))] = top(); break;
        case 0x94: memo_[static_cast<uint32_t>(memo_.size())] = top(); break;
        case 'h': push(memo_get(*take(1))); break;
        case 'j': push(memo_get(u32(take(4)))); break;
        case '0': pop(); break;
        case '2': push(top()); break;
        case '1': pop_mark(); break;
        case '.':
          if (stack_.size() != 1) fail("STOP with " + std::to_string(stack_.size()) + " values on the stack");
          return stack_.back();
        case 'i': case 'o': case 0x81: case 0x92:
          fail(std::string("object construction (opcode ") + opname(op) + ") is refused: a state dict needs none");
        case 'P': case 0x82: case 0x83: case 0x84:
          fail(std::string("opcode ") + opname(op) + " is refused");
        default:
          fail("unsupported pickle opcode " + opname(op));
      }
    }
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw CheckpointError(where_ + ": " + what + " (at byte " + std::to_string(pos_ == 0 ? 0 : pos_ - 1) + ")");
  }
  static std::string opname(unsigned char op) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%02x", op);
    return buf;
  }
  const unsigned char* take(uint64_t n) {
    if (n > data_.size() - pos_) fail("truncated");
    const unsigned char* p = &data_[pos_];
    pos_ += n;
    return p;
  }
  std::string line() {
    const auto begin = pos_;
    while (pos_ < data_.size() && data_[pos_] != '\n') ++pos_;
    if (pos_ >= data_.size()) fail("truncated GLOBAL");
    return std::string(reinterpret_cast<const char*>(&data_[begin]), pos_++ - begin);
  }
  void push(ValuePtr v) {
    if (stack_.size() >= kMaxDepth * 100) fail("stack grows past " + std::to_string(kMaxDepth * 100) + " values");
    stack_.push_back(std::move(v));
  }
  void push_int(int64_t x) {
    auto v = make(Value::Kind::kInt);
    v->i = x;
    push(v);
  }
  void push_string(Value::Kind k, uint64_t n) {
    auto v = make(k);
    const unsigned char* p = take(n);
    v->s.assign(reinterpret_cast<const char*>(p), n);
    push(v);
  }
  void push_global(const std::string& name, size_t at) {
    if (!allowed_global(name)) {
      pos_ = at + 1;
      fail("refused global " + name + ": only collections.OrderedDict, torch._utils._rebuild_tensor_v2, "
           "torch._utils._rebuild_parameter and torch's typed storages can be loaded (a weights-only load, "
           "as torch.load(weights_only=True)); nothing was run");
    }
    auto v = make(Value::Kind::kGlobal);
    v->s = name;
    push(v);
  }
  ValuePtr pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() == marks_.back())) fail("stack underflow");
    auto v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  ValuePtr& top() {
    if (stack_.empty()) fail("stack underflow");
    return stack_.back();
  }
  std::vector<ValuePtr> pop_mark() {
    if (marks_.empty()) fail("no MARK");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<ValuePtr> xs(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return xs;
  }
  ValuePtr memo_get(uint32_t k) {
    auto it = memo_.find(k);
    if (it == memo_.end()) fail("memo entry " + std::to_string(k) + " was never stored");
    return it->second;
  }
  ValuePtr list_of(const ValuePtr& v) {
    if (v->kind != Value::Kind::kList) fail("APPEND to " + std::string(kind_name(v->kind)));
    return v;
  }
  ValuePtr dict_of(const ValuePtr& v) {
    if (v->kind != Value::Kind::kDict) fail("SETITEM on " + std::string(kind_name(v->kind)));
    return v;
  }
  int64_t int_of(const ValuePtr& v, const char* what) {
    if (v->kind != Value::Kind::kInt) fail(std::string(what) + " must be an int, got " + kind_name(v->kind));
    return v->i;
  }
  std::vector<int64_t> ints_of(const ValuePtr& v, const char* what) {
    if (v->kind != Value::Kind::kTuple && v->kind != Value::Kind::kList) fail(std::string(what) + " must be a tuple of ints");
    std::vector<int64_t> out;
    for (const auto& x : v->items) out.push_back(int_of(x, what));
    return out;
  }

  // ('storage', torch.XStorage, key, location, numel)
  ValuePtr persistent_load(const ValuePtr& pid) {
    if (pid->kind != Value::Kind::kTuple || pid->items.size() != 5 || pid->items[0]->kind != Value::Kind::kString ||
        pid->items[0]->s != "storage" || pid->items[1]->kind != Value::Kind::kGlobal ||
        pid->items[2]->kind != Value::Kind::kString) {
      fail("a persistent id other than ('storage', type, key, location, numel)");
    }
    const auto type = storage_types().find(pid->items[1]->s);
    if (type == storage_types().end()) fail(pid->items[1]->s + " is not a storage type");
    const std::string& key = pid->items[2]->s;
    auto& s = storages_[key];
    if (!s) {
      s = std::make_shared<StorageRef>();
      s->key = key;
      s->dtype = type->second;
      s->numel = int_of(pid->items[4], "a storage's size");
      if (s->numel < 0) fail("storage " + key + " has a negative size");
    } else if (s->dtype != type->second) {
      fail("storage " + key + " is used with two dtypes");
    }
    auto v = make(Value::Kind::kStorage);
    v->storage = s;
    return v;
  }

  ValuePtr reduce(const ValuePtr& fn, const ValuePtr& args) {
    if (fn->kind != Value::Kind::kGlobal) fail("REDUCE on " + std::string(kind_name(fn->kind)) + ", not a global");
    if (args->kind != Value::Kind::kTuple) fail("REDUCE arguments must be a tuple");
    const auto& a = args->items;
    if (fn->s == "collections.OrderedDict") {
      if (!a.empty()) fail("OrderedDict with arguments is not supported");
      return make(Value::Kind::kDict);
    }
    if (fn->s == "torch._utils._rebuild_tensor_v2") {
      // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
      if (a.size() < 6 || a[0]->kind != Value::Kind::kStorage) fail("_rebuild_tensor_v2 needs (storage, offset, size, stride, ...)");
      auto v = make(Value::Kind::kTensor);
      v->tensor = std::make_shared<TensorRef>();
      v->tensor->storage = a[0]->storage;
      v->tensor->offset = int_of(a[1], "a tensor's storage offset");
      v->tensor->size = ints_of(a[2], "a tensor's size");
      v->tensor->stride = ints_of(a[3], "a tensor's stride");
      if (v->tensor->size.size() != v->tensor->stride.size()) fail("a tensor's size and stride differ in length");
      return v;
    }
    if (fn->s == "torch._utils._rebuild_parameter") {
      if (a.empty() || a[0]->kind != Value::Kind::kTensor) fail("_rebuild_parameter needs a tensor");
      return a[0];
    }
    fail("REDUCE on " + fn->s + " is refused");
  }

  std::string where_;
  const std::vector<unsigned char>& data_;
  size_t pos_ = 0;
  std::vector<ValuePtr> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint32_t, ValuePtr> memo_;
  std::unordered_map<std::string, std::shared_ptr<StorageRef>> storages_;
};

size_t element_size(at::ScalarType t) { return c10::elementSize(t); }

}  // namespace

std::map<std::string, at::Tensor> load_torch_bin(const std::string& path) {
  const ReadOnlyFile file(path, "a PyTorch checkpoint");
  unsigned char magic[4] = {0, 0, 0, 0};
  if (file.size() >= 4) file.read(magic, 4, 0);
  if (!(magic[0] == 'P' && magic[1] == 'K' && magic[2] == 3 && magic[3] == 4)) {
    if (magic[0] == 0x80) {
      throw CheckpointError(path + ": torch.save's legacy (before PyTorch 1.6) format, which is not read; "
                            "re-save it with a newer PyTorch or convert it to safetensors");
    }
    throw CheckpointError(path + ": not a PyTorch checkpoint (no zip archive signature)");
  }
  const ZipArchive zip(file);
  // The archive's records share one top folder, named after the file at saving time.
  std::string prefix;
  for (const auto& [name, e] : zip.entries()) {
    const auto slash = name.find('/');
    if (slash != std::string::npos && name.compare(slash, std::string::npos, "/data.pkl") == 0) {
      if (!prefix.empty()) throw CheckpointError(path + ": two data.pkl records (" + prefix + "data.pkl, " + name + ")");
      prefix = name.substr(0, slash + 1);
    }
  }
  if (prefix.empty()) throw CheckpointError(path + ": no <archive>/data.pkl record: not a torch.save archive");
  if (const ZipEntry* bo = zip.find(prefix + "byteorder")) {
    std::string order(std::min<uint64_t>(bo->size, 16), '\0');
    file.read(order.data(), order.size(), bo->data_offset);
    if (order != "little") throw CheckpointError(path + ": byte order \"" + order + "\"; only little-endian checkpoints are read");
  }
  const ZipEntry& pkl = *zip.find(prefix + "data.pkl");
  if (pkl.size > kMaxPickleBytes) {
    throw CheckpointError(path + ": " + prefix + "data.pkl is " + std::to_string(pkl.size) + " bytes, over the cap of " +
                          std::to_string(kMaxPickleBytes) + " for a state dict");
  }
  std::vector<unsigned char> pickle(pkl.size);
  file.read(pickle.data(), pkl.size, pkl.data_offset);
  const ValuePtr root = Unpickler(path + ": " + prefix + "data.pkl", pickle).run();
  if (root->kind != Value::Kind::kDict) {
    throw CheckpointError(path + ": holds " + std::string(kind_name(root->kind)) + ", not a state dict (name -> tensor)");
  }

  // Group tensors by storage so each storage is read once and dropped when its tensors are made.
  std::map<std::string, std::vector<std::pair<std::string, std::shared_ptr<TensorRef>>>> by_storage;
  std::set<std::string> names;
  for (const auto& [k, v] : root->entries) {
    if (k->kind != Value::Kind::kString) throw CheckpointError(path + ": a state dict key is " + kind_name(k->kind) + ", not a string");
    if (v->kind != Value::Kind::kTensor) {
      throw CheckpointError(path + ": entry " + k->s + " is " + kind_name(v->kind) + ", not a tensor");
    }
    if (!names.insert(k->s).second) throw CheckpointError(path + ": tensor " + k->s + " appears twice");
    by_storage[v->tensor->storage->key].emplace_back(k->s, v->tensor);
  }
  std::map<std::string, at::Tensor> out;
  for (const auto& [key, tensors] : by_storage) {
    const StorageRef& s = *tensors.front().second->storage;
    const std::string record = prefix + "data/" + key;
    const ZipEntry* e = zip.find(record);
    if (!e) throw CheckpointError(path + ": storage record " + record + " (of tensor " + tensors.front().first + ") is missing");
    const uint64_t bytes = static_cast<uint64_t>(s.numel) * element_size(s.dtype);
    if (static_cast<uint64_t>(s.numel) > std::numeric_limits<uint64_t>::max() / element_size(s.dtype) || e->size != bytes) {
      throw CheckpointError(path + ": storage record " + record + " holds " + std::to_string(e->size) + " bytes, but its " +
                            std::to_string(s.numel) + " " + c10::toString(s.dtype) + " elements need " + std::to_string(bytes));
    }
    at::Tensor storage = at::empty({s.numel}, at::TensorOptions().dtype(s.dtype));
    if (bytes > 0) file.read(storage.data_ptr(), bytes, e->data_offset);
    for (const auto& [name, t] : tensors) {
      // Every element the view reaches must lie inside the storage.
      bool empty = false;
      int64_t last = t->offset;
      for (size_t d = 0; d < t->size.size(); ++d) {
        if (t->size[d] < 0 || t->stride[d] < 0) throw CheckpointError(path + ": tensor " + name + " has a negative size or stride");
        if (t->size[d] == 0) empty = true;
        else if (int64_t reach = 0; __builtin_mul_overflow(t->size[d] - 1, t->stride[d], &reach) || __builtin_add_overflow(last, reach, &last))
          throw CheckpointError(path + ": tensor " + name + ": its size and stride overflow");
      }
      if (t->offset < 0 || (!empty && last >= s.numel)) {
        throw CheckpointError(path + ": tensor " + name + " reaches element " + std::to_string(last) + " of storage " + key +
                              ", which holds " + std::to_string(s.numel));
      }
      at::Tensor view = storage.as_strided(t->size, t->stride, empty ? 0 : t->offset);
      const bool whole = tensors.size() == 1 && t->offset == 0 && view.is_contiguous() && view.numel() == s.numel;
      out.emplace(name, whole ? view : view.clone(at::MemoryFormat::Contiguous));
    }
  }
  return out;
}

}  // namespace distill
