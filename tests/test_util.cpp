#include "tests/test_util.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "models/io/safetensors.h"

namespace distill::test {
namespace fs = std::filesystem;

std::string fixture(const std::string& relative) { return std::string(DISTILL_TEST_DATA) + "/" + relative; }

TempDir::TempDir() {
  std::random_device rd;
  path_ = (fs::temp_directory_path() / ("distill-test-" + std::to_string(rd()))).string();
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

::testing::AssertionResult tensors_close(const torch::Tensor& actual, const torch::Tensor& expected, double rtol) {
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure() << "shape " << actual.sizes() << " != expected " << expected.sizes();
  }
  auto a = actual.detach().to(torch::kFloat64), e = expected.detach().to(torch::kFloat64);
  const double scale = std::max(e.abs().max().item<double>(), 1e-12);
  const double err = (a - e).abs().max().item<double>();
  if (err <= rtol * scale) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max abs error " << err << " > " << rtol << " * max|expected| " << scale;
}

std::map<std::string, torch::Tensor> load_fixture_tensors(const std::string& relative) {
  return SafetensorsFile(fixture(relative)).load_all();
}

namespace {
std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

int run_distill(const std::string& args, std::string* out, std::string* err, const std::string& env) {
  TempDir tmp;
  // From the source directory, so relative paths in configs (datasets/...) resolve as in the README.
  const std::string cmd = "cd " + std::string(DISTILL_SOURCE_DIR) + " && " + (env.empty() ? "" : "env " + env + " ") + std::string(DISTILL_BINARY) + " --threads 1 " + args + " >" + tmp.file("out") + " 2>" + tmp.file("err");
  int status = std::system(cmd.c_str());
  if (out) *out = slurp(tmp.file("out"));
  if (err) *err = slurp(tmp.file("err"));
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

bool have_sotu() { return std::filesystem::exists(std::string(DISTILL_SOURCE_DIR) + "/datasets/sotu/validation.txt"); }

}  // namespace distill::test
