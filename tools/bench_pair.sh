#!/usr/bin/env bash
# Times two distill binaries side by side on this machine: `distill bench --json` run alternately,
# PAIRS times each, and the median of each figure over the runs (a time taken on another machine is
# never comparable). Each pair also gives a ratio (candidate / baseline, the runs next to each other
# in time); their median and a distribution-free interval for it (order statistics of the pair
# ratios, with its exact coverage: about 95% needs 6 pairs or more) are the comparison's uncertainty.
# Usage:
#   tools/bench_pair.sh BASELINE_BINARY CANDIDATE_BINARY PAIRS [bench options, e.g. --preset d256]
# Candidate-only options go after `--candidate`, e.g. `--preset d256 --candidate --student-bf16`.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 BASELINE CANDIDATE PAIRS [BENCH OPTIONS] [--candidate OPTIONS]" >&2; exit 2; }
base="$1" cand="$2" pairs="$3"
shift 3
common=() extra=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--candidate" ]; then shift; extra=("$@"); break; fi
  common+=("$1"); shift
done
keys="teacher_forward student_step distill_step cached_distill_step switch_layer_fwd_bwd dense_ffn_fwd_bwd switch_vs_dense_ratio peak_rss_mb"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for i in $(seq "$pairs"); do
  "$base" bench "${common[@]}" --json >"$out/base.$i.json" 2>/dev/null
  "$cand" bench "${common[@]}" "${extra[@]}" --json >"$out/cand.$i.json" 2>/dev/null
done
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
# A timing's median (the "timings" objects), or a plain number.
value() {
  if grep -q "\"$1\": {" "$2"; then
    grep -h -A4 "\"$1\": {" "$2" | grep median_ms | head -1 | sed 's/.*: *//; s/,$//'
  else
    grep -h "\"$1\":" "$2" | head -1 | sed 's/.*: *//; s/,$//'
  fi
}
# The median of the pair ratios and the widest order-statistic interval [r(j), r(n+1-j)] whose
# coverage 1 - 2 P(Binomial(n, 1/2) < j) is at least 95% (j = 1, [min, max], below 6 pairs).
pair_ratios() {
  sort -g | awk '{r[NR] = $1} END {
    n = NR; med = (n % 2) ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2
    j = 1; cdf = 0.5 ^ n                                # P(X < 1)
    while (j < n / 2) {                                 # next j while P(X < j + 1) keeps 95%
      p = 0.5 ^ n; for (i = 1; i <= j; i++) p = p * (n - i + 1) / i
      if (1 - 2 * (cdf + p) < 0.95) break
      cdf += p; j++
    }
    printf "%8.3f  [%.3f, %.3f] %4.1f%%", med, r[j], r[n + 1 - j], 100 * (1 - 2 * cdf)
  }'
}
printf "%-24s %12s %12s %8s   %s   (medians of %s pairs; ms unless named; %s)\n" figure baseline candidate ratio \
  "pair ratios: median [interval] coverage" "$pairs" "${common[*]} | ${extra[*]}"
for k in $keys; do
  b=$(for f in "$out"/base.*.json; do value "$k" "$f"; done | median)
  c=$(for f in "$out"/cand.*.json; do value "$k" "$f"; done | median)
  [ -n "$b" ] && [ -n "$c" ] || continue
  r=$(for i in $(seq "$pairs"); do
    bi=$(value "$k" "$out/base.$i.json") ci=$(value "$k" "$out/cand.$i.json")
    awk -v b="$bi" -v c="$ci" 'BEGIN {if (b > 0) print c / b}'
  done | pair_ratios)
  printf "%-24s %12.2f %12.2f %8.3f   %s\n" "$k" "$b" "$c" "$(awk -v b="$b" -v c="$c" 'BEGIN {print c / b}')" "$r"
done
