// Writing a file so that readers see either the old content or the complete new one.
#pragma once

#include <functional>
#include <ostream>
#include <string>

namespace distill {

// Streams into "<path>.tmp.<pid>", flushes, fsyncs and renames it over `path`. On any failure the
// temporary is removed and an Error naming `path` is thrown; `path` is then untouched.
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write);

// Convenience for small text files.
void write_text_atomic(const std::string& path, const std::string& text);

// What a path is when it is not a regular file ("a directory", "a FIFO", "a socket", "a device"),
// or "" when it is one or does not exist. Readers check it first: opening a FIFO blocks forever.
std::string non_regular_kind(const std::string& path);

// Whole file as bytes; throws InputError naming `path` when it cannot be read.
std::string read_text_file(const std::string& path);

}  // namespace distill
