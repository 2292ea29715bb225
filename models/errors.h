// Typed exceptions thrown by the libraries; only the CLI's main turns them into exit codes.
#pragma once

#include <stdexcept>
#include <string>

namespace distill {

// Base of every error the tool reports to a user: the message is complete and says what was
// expected, naming the file, key or tensor involved.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A configuration (config.json, run YAML, options struct) that is malformed or out of range.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// A checkpoint file that cannot be read or does not match the model it should fill.
class CheckpointError : public Error {
 public:
  using Error::Error;
};

// User-supplied data (inputs JSON, corpus, ids) that is malformed.
class InputError : public Error {
 public:
  using Error::Error;
};

}  // namespace distill
