// The readers under test take paths: each input is written to one scratch file per process.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <cstdlib>
#include <string>

namespace distill::fuzz {

inline std::string scratch_file(const uint8_t* data, size_t size, const std::string& name) {
  const std::string dir = "/tmp/distill-fuzz-" + std::to_string(getpid());
  static const bool made = [&] { return std::system(("mkdir -p " + dir).c_str()) == 0; }();
  (void)made;
  const std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return path;
}

}  // namespace distill::fuzz
