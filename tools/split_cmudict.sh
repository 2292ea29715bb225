#!/usr/bin/env bash
# Writes grapheme-to-phoneme pairs from a CMU Pronouncing Dictionary file (`WORD  PH1 PH2 ...` per
# line, alternates as `WORD(1)`) into OUTDIR/{train,validation,test}.tsv, one `input<TAB>target`
# per line: the word's lower-cased characters separated by spaces, and its phonemes.
#   tools/split_cmudict.sh DICT OUTDIR [SEED]
# The split is by headword (a hash of SEED and the word without its `(n)`): about 2% of the
# headwords go to validation and 5% to test, each with every one of its pronunciations, so no
# headword is in two splits. Deterministic for a given SEED (default 1234).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 DICT OUTDIR [SEED]" >&2
  exit 2
fi
dict="$1"
out="$2"
seed="${3:-1234}"
if [ ! -s "$dict" ]; then
  echo "split_cmudict: ERROR: $dict is missing or empty" >&2
  exit 1
fi
mkdir -p "$out"
tmp="$(mktemp -d "$out/.split.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
LC_ALL=C awk -v seed="$seed" -v dir="$tmp" -v dict="$dict" '
BEGIN { for (i = 1; i < 256; ++i) ord[sprintf("%c", i)] = i }
/^;;;/ || NF == 0 { next }
{
  if (NF < 2) { printf "split_cmudict: ERROR: %s:%d: expected WORD and its phonemes\n", dict, NR > "/dev/stderr"; bad = 1; exit 1 }
  word = $1
  sub(/\([0-9]+\)$/, "", word)  # an alternate pronunciation stays with its headword
  h = seed % 2147483647
  for (i = 1; i <= length(word); ++i) h = (h * 31 + ord[substr(word, i, 1)]) % 2147483647
  bucket = h % 100
  split_name = bucket < 2 ? "validation" : bucket < 7 ? "test" : "train"
  letters = ""
  lower = tolower(word)
  for (i = 1; i <= length(lower); ++i) letters = letters (i > 1 ? " " : "") substr(lower, i, 1)
  phones = $2
  for (i = 3; i <= NF; ++i) phones = phones " " $i
  print letters "\t" phones > (dir "/" split_name ".tsv")
  n[split_name]++
}
END {
  if (bad) exit 1
  printf "split_cmudict: %d train, %d validation, %d test pairs\n", n["train"], n["validation"], n["test"] > "/dev/stderr"
}' "$dict"
for s in train validation test; do
  touch "$tmp/$s.tsv"
  mv "$tmp/$s.tsv" "$out/$s.tsv"
done
