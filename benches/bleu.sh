#!/usr/bin/env bash
# Bench (not a test): `cotext bleu` against the sacreBLEU 2.6.0 CLI on 16
# hypothesis files of 3,000 lines each, scored against one reference file.
#
#   benches/bleu.sh [SACREBLEU] [REPEATS]
#
# The reference is the first 3,000 lines of Multi30k train.en; the hypotheses are
# copies perturbed deterministically (seeded word drops, substitutions, swaps, case
# flips). Each tool runs REPEATS times (default 3) per metric; the fastest run's
# wall time and CPU time (user + sys; cotext uses every core through rayon,
# sacreBLEU one) are reported with the ratios. Both tools' scores are printed so a
# reader can see they agree. Build first: cargo build --release.
set -euo pipefail
cd "$(dirname "$0")/.."
SACREBLEU=${1:-/work/venvs/torch/bin/sacrebleu}
REPEATS=${2:-3}
PYTHON=$(dirname "$SACREBLEU")/python
COTEXT=target/release/cotext
DATA=${MULTI30K:-/work/shared/datasets/multi30k}
[ -x "$COTEXT" ] || { echo "build first: cargo build --release" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

"$PYTHON" - "$DATA/train.en" "$TMP" <<'PY'
import random, sys
src, out = sys.argv[1], sys.argv[2]
with open(src, encoding="utf-8") as f:
    ref = [next(f).rstrip("\n") for _ in range(3000)]
vocab = sorted({w for l in ref for w in l.split()})
with open(f"{out}/ref.txt", "w", encoding="utf-8") as f:
    f.write("\n".join(ref) + "\n")
for k in range(16):
    rng = random.Random(k)
    lines = []
    for l in ref:
        ws = []
        for w in l.split():
            p = rng.random()
            if p < 0.05:
                continue
            ws.append(rng.choice(vocab) if p < 0.15 else (w.lower() if p < 0.2 else w))
        for i in range(len(ws) - 1):
            if rng.random() < 0.05:
                ws[i], ws[i + 1] = ws[i + 1], ws[i]
        lines.append(" ".join(ws))
    with open(f"{out}/hyp{k:02d}.txt", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
PY
HYPS=("$TMP"/hyp*.txt)
echo "data: ${#HYPS[@]} hypothesis files x $(wc -l < "${HYPS[0]}") lines; $(nproc) CPUs; $REPEATS runs each, best shown"

best() { # "WALL CPU" of the fastest of REPEATS runs (CPU = user + sys); last output in $TMP/out
  local b="" bc=""
  for _ in $(seq "$REPEATS"); do
    /usr/bin/time -f "%e %U %S" -o "$TMP/time" "$@" > "$TMP/out"
    read -r w u s < "$TMP/time"
    if [ -z "$b" ] || (( $(echo "$w < $b" | bc -l) )); then b=$w; bc=$(echo "$u + $s" | bc -l); fi
  done
  echo "$b $bc"
}

for metric in bleu chrf; do
  if [ "$metric" = bleu ]; then sargs=(-m bleu); cargs=(); else sargs=(-m chrf); cargs=(--metric chrf); fi
  read -r ts tsc < <(best "$SACREBLEU" "$TMP/ref.txt" -i "${HYPS[@]}" "${sargs[@]}" -f text -w 4 -q)
  s_first=$(grep -m1 hyp00 "$TMP/out" || true)
  cp "$TMP/out" "$TMP/sacre.txt"
  read -r tc tcc < <(best "$COTEXT" bleu -r "$TMP/ref.txt" "${HYPS[@]}" "${cargs[@]}")
  c_first=$(head -n1 "$TMP/out")
  printf '%-5s wall: sacrebleu %7.3f s  cotext %6.3f s  cotext %5.1fx faster | CPU: sacrebleu %7.3f s  cotext %6.3f s  %5.1fx\n' \
    "$metric" "$ts" "$tc" "$(echo "$ts / $tc" | bc -l)" "$tsc" "$tcc" "$(echo "$tsc / $tcc" | bc -l)"
  echo "      sacrebleu: $s_first"
  echo "      cotext:    $c_first"
  "$COTEXT" bleu -r "$TMP/ref.txt" "${HYPS[@]}" "${cargs[@]}" --format json > "$TMP/cotext.json"
  "$PYTHON" - "$TMP/sacre.txt" "$TMP/cotext.json" <<'PY'
import json, re, sys
sacre = {m.group(1): float(m.group(2)) for m in re.finditer(r"(\S+hyp\d+\.txt)\s*│\s*([0-9.]+)", open(sys.argv[1]).read())}
ours = {o["file"]: o["score"] for o in map(json.loads, open(sys.argv[2]))}
bad = [f for f in ours if f not in sacre or abs(round(ours[f], 4) - sacre[f]) > 1e-9]
print(f"      scores (4 decimals) agree on {len(ours) - len(bad)}/{len(ours)} files" + (f"; differ: {bad}" if bad else ""))
PY
done
