// Helpers shared by the tests: fixture paths, temporary directories, tensor comparison.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <string>

namespace distill::test {

// Path of a file under tests/fixtures.
std::string fixture(const std::string& relative);

// A fresh directory, removed when the object goes out of scope.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// |actual - expected| <= rtol * max|expected| elementwise (1e-4 relative, as the goldens demand).
::testing::AssertionResult tensors_close(const torch::Tensor& actual, const torch::Tensor& expected,
                                         double rtol = 1e-4);

// Tensors of a safetensors file in tests/fixtures.
std::map<std::string, torch::Tensor> load_fixture_tensors(const std::string& relative);

// Runs the distill binary with `args` (and `env` assignments before it); returns the exit code
// and fills stdout/stderr.
int run_distill(const std::string& args, std::string* out = nullptr, std::string* err = nullptr,
                const std::string& env = "");

// Whether tools/fetch_data.sh has fetched the speeches the end-to-end tests train on.
bool have_sotu();

}  // namespace distill::test
