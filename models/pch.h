// Precompiled for every target: the LibTorch headers cost ~15 s per translation unit otherwise.
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>
#include <map>
#include <memory>
