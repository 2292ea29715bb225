#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz: clang, AddressSanitizer + UndefinedBehaviorSanitizer)
# into build-fuzz/ and runs each for SECONDS (default 60) from its seed corpus in tests/fuzz/seeds.
# A crash, leak, hang (>10 s per input) or >2 GB input exits non-zero with the target's log and
# leaves the input as build-fuzz/crash-* (or leak-*, timeout-*, oom-*): add it to the seeds and a
# regression test. Usage: tools/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors torch_bin hf_config run_config corpus teacher_targets)

cmake -S "$root/tests/fuzz" -B "$root/build-fuzz" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$root/build-fuzz" -j"$(nproc)"
cd "$root/build-fuzz"
for t in "${targets[@]}"; do
  work="corpus/$t"
  mkdir -p "$work"
  cp -n "$root/tests/fuzz/seeds/$t/"* "$work/"
  echo "fuzz: $t for ${seconds} s"
  if ! "./fuzz_$t" -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 "$work" >"fuzz_$t.log" 2>&1; then
    tail -60 "fuzz_$t.log"
    echo "fuzz: $t FAILED (input saved in $root/build-fuzz)" >&2
    exit 1
  fi
  grep -E "^Done [0-9]+ runs" "fuzz_$t.log" | sed "s/^/fuzz: $t: /"
done
