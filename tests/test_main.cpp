#include <gtest/gtest.h>

#include "distill/process/runtime.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  distill::init_runtime();
  return RUN_ALL_TESTS();
}
