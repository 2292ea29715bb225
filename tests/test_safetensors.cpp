// safetensors reader/writer: round trips, sharding and every malformed file we reject.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "models/io/atomic_file.h"
#include "models/errors.h"
#include "models/io/safetensors.h"
#include "models/io/torch_bin.h"
#include "tests/test_util.h"

namespace distill {
namespace {

using test::TempDir;

// Writes a raw safetensors file: header JSON text followed by `data_bytes` zero bytes.
void write_raw(const std::string& path, const std::string& header, size_t data_bytes, int64_t header_len = -1) {
  std::ofstream out(path, std::ios::binary);
  uint64_t n = header_len < 0 ? header.size() : static_cast<uint64_t>(header_len);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header;
  out << std::string(data_bytes, '\0');
}

std::string error_of(const std::string& path) {
  try {
    SafetensorsFile f(path);
  } catch (const CheckpointError& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, RoundTripsEveryDtype) {
  TempDir dir;
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"f32", torch::randn({3, 4})},
      {"f16", torch::randn({5}).to(torch::kHalf)},
      {"bf16", torch::randn({2, 2}).to(torch::kBFloat16)},
      {"f64", torch::randn({1}).to(torch::kDouble)},
      {"i64", torch::arange(6, torch::kLong).view({2, 3})},
      {"i32", torch::arange(4, torch::kInt)},
      {"u8", torch::arange(7).to(torch::kByte)},
      {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(3.5f)},
      {"empty", torch::zeros({0, 4})},
      {"strided", torch::randn({4, 6}).t()},  // non-contiguous input is stored contiguous
  };
  save_safetensors(dir.file("t.safetensors"), tensors, {{"note", "x"}});
  SafetensorsFile f(dir.file("t.safetensors"));
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "x");
  for (const auto& [name, t] : tensors) {
    auto got = f.load(name);
    EXPECT_EQ(got.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(got, t)) << name;
  }
  // Data section starts 8-byte aligned, as the reference writer does.
  uint64_t header_len = 0;
  std::ifstream in(dir.file("t.safetensors"), std::ios::binary);
  in.read(reinterpret_cast<char*>(&header_len), 8);
  EXPECT_EQ(header_len % 8, 0u);
}

TEST(Safetensors, ReadsTheHuggingFaceFixture) {
  SafetensorsFile f(test::fixture("switch-tiny-4/model.safetensors"));
  EXPECT_EQ(f.entries().size(), 61u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.load("shared.weight").sizes(), (std::vector<int64_t>{512, 64}));
}

TEST(Safetensors, ShardedModelRoundTrip) {
  TempDir dir;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (int i = 0; i < 5; ++i) tensors.emplace_back("w" + std::to_string(i), torch::randn({64}));
  save_model_tensors(dir.path(), tensors, /*max_shard_bytes=*/600);  // 256 bytes each -> 3 shards
  EXPECT_TRUE(std::filesystem::exists(dir.file("model.safetensors.index.json")));
  EXPECT_TRUE(std::filesystem::exists(dir.file("model-00003-of-00003.safetensors")));
  EXPECT_FALSE(std::filesystem::exists(dir.file("model.safetensors")));
  auto loaded = load_model_tensors(dir.path());
  ASSERT_EQ(loaded.size(), 5u);
  for (const auto& [name, t] : tensors) EXPECT_TRUE(torch::equal(loaded.at(name), t)) << name;
}

TEST(Safetensors, ShardIndexNamingAMissingTensorIsAnError) {
  TempDir dir;
  save_safetensors(dir.file("a.safetensors"), {{"x", torch::zeros({2})}});
  write_text_atomic(dir.file("model.safetensors.index.json"), R"({"weight_map": {"x": "a.safetensors", "y": "a.safetensors"}})");
  try {
    load_model_tensors(dir.path());
    FAIL() << "expected an error";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor y"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, ShardIndexMayNotLeadOutOfTheModelDirectory) {
  // Issue 13, class 7: an index naming ../x or /etc/passwd is refused before anything is opened.
  TempDir dir;
  save_safetensors(dir.file("a.safetensors"), {{"x", torch::zeros({2})}});
  for (const std::string shard : {"../a.safetensors", "/etc/passwd", "..", "sub/a.safetensors", ""}) {
    write_text_atomic(dir.file("model.safetensors.index.json"), R"({"weight_map": {"x": ")" + shard + R"("}})");
    try {
      load_model_tensors(dir.path());
      FAIL() << shard;
    } catch (const CheckpointError& e) {
      EXPECT_NE(std::string(e.what()).find("a shard must be a plain file name in the model directory"), std::string::npos)
          << e.what();
    }
  }
}

TEST(Safetensors, AFifoOrADirectoryIsRefusedByName) {
  // Issue 13, class 7: opening a FIFO would block forever.
  TempDir dir;
  ASSERT_EQ(::mkfifo(dir.file("f.safetensors").c_str(), 0600), 0);
  EXPECT_NE(error_of(dir.file("f.safetensors")).find("f.safetensors: is a FIFO, not a safetensors file"), std::string::npos)
      << error_of(dir.file("f.safetensors"));
  std::filesystem::create_directories(dir.file("d.safetensors"));
  EXPECT_NE(error_of(dir.file("d.safetensors")).find("d.safetensors: is a directory"), std::string::npos);
  EXPECT_THROW(read_text_file(dir.file("f.safetensors")), InputError);
}

TEST(Safetensors, TruncatedFile) {
  TempDir dir;
  save_safetensors(dir.file("t.safetensors"), {{"x", torch::randn({100})}});
  std::filesystem::resize_file(dir.file("t.safetensors"), std::filesystem::file_size(dir.file("t.safetensors")) - 10);
  EXPECT_NE(error_of(dir.file("t.safetensors")).find("out of bounds"), std::string::npos) << error_of(dir.file("t.safetensors"));
  std::filesystem::resize_file(dir.file("t.safetensors"), 5);
  EXPECT_NE(error_of(dir.file("t.safetensors")).find("shorter than the 8-byte header"), std::string::npos);
}

TEST(Safetensors, HeaderLengthPastTheEnd) {
  TempDir dir;
  write_raw(dir.file("t.safetensors"), "{}", 0, 4096);
  auto err = error_of(dir.file("t.safetensors"));
  EXPECT_NE(err.find("runs past the end"), std::string::npos) << err;
  EXPECT_NE(err.find("t.safetensors"), std::string::npos) << err;
}

TEST(Safetensors, HeaderLengthOverTheCapSaysSo) {
  TempDir dir;
  write_raw(dir.file("t.safetensors"), "{}", 0, int64_t{1} << 40);
  auto err = error_of(dir.file("t.safetensors"));
  EXPECT_NE(err.find("is over the cap"), std::string::npos) << err;
}

TEST(Safetensors, ShapesWhoseSizeOverflowsAreRefusedByName) {
  // Issue 13, class 6: the element count wrapped and passed the byte check.
  TempDir dir;
  for (const std::string shape : {"[2147483648, 2147483648, 4]", "[18446744073709551615, 0]", "[4611686018427391999]",
                                  "[4294967296, 4294967296]"}) {
    write_raw(dir.file("t.safetensors"), R"({"w":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,0]}})", 0);
    auto err = error_of(dir.file("t.safetensors"));
    EXPECT_NE(err.find("tensor w: shape "), std::string::npos) << shape << ": " << err;
    EXPECT_NE(err.find("is too large"), std::string::npos) << shape << ": " << err;
  }
}

TEST(Safetensors, ManyTinyTensorsParseInLinearTime) {
  // Issue 13, class 5: 200k entries took minutes with the callback parser.
  TempDir dir;
  std::string header = "{";
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    header += (i ? "," : "") + std::string("\"t") + std::to_string(i) + R"(":{"dtype":"U8","shape":[1],"data_offsets":[)" +
              std::to_string(i) + "," + std::to_string(i + 1) + "]}";
  }
  header += "}";
  write_raw(dir.file("t.safetensors"), header, n);
  const auto start = std::chrono::steady_clock::now();
  SafetensorsFile f(dir.file("t.safetensors"));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(f.entries().size(), static_cast<size_t>(n));
  EXPECT_LT(seconds, 20.0);  // ~1 s here; the quadratic parser took minutes
}

TEST(Safetensors, OverlappingOffsets) {
  TempDir dir;
  write_raw(dir.file("t.safetensors"),
            R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12);
  auto err = error_of(dir.file("t.safetensors"));
  EXPECT_NE(err.find("tensor b overlaps tensor a"), std::string::npos) << err;
}

TEST(Safetensors, OutOfBoundsOffsets) {
  TempDir dir;
  write_raw(dir.file("t.safetensors"), R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8);
  auto err = error_of(dir.file("t.safetensors"));
  EXPECT_NE(err.find("tensor a: data_offsets [0, 16] out of bounds"), std::string::npos) << err;
}

TEST(Safetensors, BytesMustMatchDtypeAndShape) {
  TempDir dir;
  write_raw(dir.file("t.safetensors"), R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8);
  auto err = error_of(dir.file("t.safetensors"));
  EXPECT_NE(err.find("tensor a: 8 bytes do not match F32 [3]"), std::string::npos) << err;
}

TEST(Safetensors, UnknownDtype) {
  TempDir dir;
  write_raw(dir.file("t.safetensors"), R"({"a":{"dtype":"F8_E9","shape":[2],"data_offsets":[0,2]}})", 2);
  auto err = error_of(dir.file("t.safetensors"));
  EXPECT_NE(err.find("tensor a: unknown dtype \"F8_E9\""), std::string::npos) << err;
}

TEST(Safetensors, DuplicateNames) {
  TempDir dir;
  write_raw(dir.file("t.safetensors"),
            R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", 2);
  auto err = error_of(dir.file("t.safetensors"));
  EXPECT_NE(err.find("tensor a appears twice"), std::string::npos) << err;
}

TEST(Safetensors, HoleAndTrailingBytes) {
  TempDir dir;
  write_raw(dir.file("t.safetensors"), R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", 2);
  EXPECT_NE(error_of(dir.file("t.safetensors")).find("hole"), std::string::npos);
  write_raw(dir.file("u.safetensors"), R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 3);
  EXPECT_NE(error_of(dir.file("u.safetensors")).find("trailing bytes"), std::string::npos);
}

TEST(Safetensors, HeaderNotJson) {
  TempDir dir;
  write_raw(dir.file("t.safetensors"), "{not json", 0);
  EXPECT_NE(error_of(dir.file("t.safetensors")).find("not valid JSON"), std::string::npos);
}

// ---- pytorch_model.bin (issue 14.3); fixtures from tools/make_torch_bin_fixtures.py ----

void expect_same_tensors(const std::map<std::string, at::Tensor>& got, const std::map<std::string, at::Tensor>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, t] : want) {
    ASSERT_TRUE(got.count(name)) << name;
    EXPECT_EQ(got.at(name).scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(got.at(name), t)) << name;
  }
}

TEST(TorchBin, ReadsTheSameTensorsAsTheSafetensorsCopy) {
  const auto want = load_model_tensors(test::fixture("switch-tiny-4"));
  EXPECT_EQ(model_weights_file(test::fixture("switch-tiny-4-bin")), test::fixture("switch-tiny-4-bin") + "/pytorch_model.bin");
  expect_same_tensors(load_model_tensors(test::fixture("switch-tiny-4-bin")), want);
  expect_same_tensors(load_model_tensors(test::fixture("torch-bin/sharded")), want);
}

TEST(TorchBin, ViewsIntoASharedStorageKeepTheirOffsetsAndStrides) {
  const auto q = load_model_tensors(test::fixture("switch-tiny-4")).at("encoder.block.0.layer.0.SelfAttention.q.weight");
  const auto v = load_torch_bin(test::fixture("torch-bin/views.bin"));
  EXPECT_TRUE(torch::equal(v.at("whole"), q));
  EXPECT_TRUE(torch::equal(v.at("rows_10_to_19"), q.slice(0, 10, 20)));
  EXPECT_TRUE(torch::equal(v.at("rows_0_to_3_transposed"), q.slice(0, 0, 4).t()));
  EXPECT_TRUE(torch::equal(v.at("column_5"), q.select(1, 5)));
  // Each its own memory: changing one leaves the others as they were.
  for (const auto& [name, t] : v) EXPECT_TRUE(t.is_contiguous()) << name;
  v.at("rows_10_to_19").zero_();
  EXPECT_TRUE(torch::equal(v.at("whole"), q));
}

TEST(TorchBin, AMaliciousPickleIsRefusedByItsGlobalAndNothingRuns) {
  const std::string marker = "/tmp/distill-pickle-ran";
  std::filesystem::remove(marker);
  try {
    load_torch_bin(test::fixture("torch-bin/evil.bin"));
    FAIL();
  } catch (const CheckpointError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("evil.bin: archive/data.pkl: refused global posix.system"), std::string::npos) << m;
    EXPECT_NE(m.find("nothing was run"), std::string::npos) << m;
  }
  EXPECT_FALSE(std::filesystem::exists(marker));
}

std::string bin_error(const std::string& bytes) {
  TempDir dir;
  write_text_atomic(dir.file("pytorch_model.bin"), bytes);
  try {
    load_model_tensors(dir.path());
  } catch (const CheckpointError& e) {
    return e.what();
  }
  return "";
}

TEST(TorchBin, DamagedArchivesAreNamedErrors) {
  const std::string tiny = read_text_file(test::fixture("torch-bin/tiny.bin"));
  auto patched = [&](const std::string& from, const std::string& to) {
    auto s = tiny;  // every occurrence: a zip names its entries twice
    EXPECT_NE(s.find(from), std::string::npos) << "fixture changed";
    for (auto at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
    return s;
  };
  EXPECT_NE(bin_error("").find("not a PyTorch checkpoint"), std::string::npos);
  EXPECT_NE(bin_error("PK").find("not a PyTorch checkpoint"), std::string::npos);
  EXPECT_NE(bin_error(std::string("\x80\x02\x8a\x0alegacy", 10)).find("legacy (before PyTorch 1.6) format"), std::string::npos);
  EXPECT_NE(bin_error(tiny.substr(0, tiny.size() / 2)).find("no end-of-central-directory record"), std::string::npos);
  // The view's offset (BININT1 0 before its size (2, 2)) moved past the 4-element storage.
  EXPECT_NE(bin_error(patched(std::string("QK\x00K\x02K\x02\x86", 8), std::string("QK\x09K\x02K\x02\x86", 8)))
                .find("tensor w reaches element 12 of storage 0, which holds 4"),
            std::string::npos);
  // The storage's declared size (BININT1 4 before TUPLE) no longer matches its record.
  EXPECT_NE(bin_error(patched(std::string("K\x04tq", 4), std::string("K\x05tq", 4))).find("holds 16 bytes, but its 5 Float elements need 20"),
            std::string::npos);
  // A global swapped for another of the same length is refused by name.
  EXPECT_NE(bin_error(patched("collections\nOrderedDict", "collections\nOrderedDicX")).find("refused global collections.OrderedDicX"),
            std::string::npos);
  EXPECT_NE(bin_error(patched("archive/data/0", "archive/data/7")).find("storage record archive/data/0 (of tensor w) is missing"),
            std::string::npos);
}

TEST(Safetensors, FailedWriteLeavesNoFile) {
  TempDir dir;
  EXPECT_THROW(save_safetensors(dir.file("t.safetensors"), {{"c", torch::randn({2}, torch::kComplexFloat)}}), Error);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace distill
