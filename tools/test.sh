#!/usr/bin/env bash
# Sets up the machine, builds distill and runs the whole test suite. CI runs exactly this.
# Extra arguments go to ctest (e.g. -L golden).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/tools/setup.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$root/build" -j"$(nproc)"
(cd "$root/build" && ctest --output-on-failure "$@")
# Each fuzz target for a minute (tools/fuzz.sh SECONDS runs them longer).
"$root/tools/fuzz.sh" "${DISTILL_FUZZ_SECONDS:-60}"
