#!/usr/bin/env bash
# Quality of the exact key groups (spec §3b) on the project's video-like inputs: relative L2 error against
# dense attention per head, for t = 1, 2 x sink frames S = 0, 1 x window radius r = none, 1, on the CPU.
# Dense attention runs once and is reused. Usage:
#   bench/exact_groups_quality.sh VMONARCH_BINARY OUT_DIR [GRID] [HEADS] [HEAD_DIM]
# Writes OUT_DIR/compare_t{t}_s{S}_r{r}.json (vmonarch compare --json) and prints one line per setting.
set -euo pipefail
cli=${1:?vmonarch binary}
out=${2:?output directory}
grid=${3:-16,28,52}
heads=${4:-12}
head_dim=${5:-128}
mkdir -p "$out"
inputs=(--q "$out/q.npy" --k "$out/k.npy" --v "$out/v.npy")
[[ -f $out/v.npy ]] || "$cli" make-inputs "${inputs[@]}" --grid "$grid" --heads "$heads" --head-dim "$head_dim" --seed 0
[[ -f $out/dense.npy ]] || "$cli" run "${inputs[@]}" --grid "$grid" --device cpu --dense --out "$out/dense.npy"
for t in 1 2; do
  for s in 0 1; do
    for r in none 1; do
      window=()
      [[ $r == none ]] || window=(--window-radius "$r")
      json="$out/compare_t${t}_s${s}_r${r}.json"
      "$cli" compare "${inputs[@]}" --grid "$grid" --device cpu --iterations "$t" --sink-frames "$s" "${window[@]}" \
        --reference "$out/dense.npy" --json > "$json.part"
      mv "$json.part" "$json"
      echo "t=$t S=$s r=$r: $(python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(' '.join(f\"{h['rel_l2']:.4f}\" for h in j['per_head']), 'overall', f\"{j['overall']['rel_l2']:.4f}\", 'vmonarch', f\"{j['seconds']['vmonarch']:.1f}s\")" "$json")"
    done
  done
done
