#!/usr/bin/env bash
# cotext vs PyTorch eager: training updates per second and peak memory of five
# workloads × {ce, cot}. Each case runs in its own process (benches/train_step.rs
# for cotext, benches/torch_ref.py for PyTorch), cotext and PyTorch alternating,
# for R rounds; prints a markdown table of the medians over rounds (peak RSS: the
# largest), ready for the table in docs/performance.md.
#
#   bash benches/vs_torch.sh                 # 3 rounds, 20 timed updates per case
#   bash benches/vs_torch.sh --quick         # smoke run: 1 round, 2 updates per case
#   bash benches/vs_torch.sh --rounds 5 --steps 30 --workloads "bilstm-sst5 lstm-multi30k"
#
# Options: --rounds R (3), --steps N (20), --warmup W (3), --threads T (2; sets
# RAYON_NUM_THREADS, CANDLE_NUM_THREADS and torch.set_num_threads),
# --workloads "…", --objectives "ce cot", --python PATH (TORCH_PYTHON, default
# /work/venvs/torch/bin/python), --out DIR (raw JSON lines and the table; default a
# fresh temporary directory). Run it on an idle machine: both sides are timed by
# wall clock.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3 steps=20 warmup=3 threads=2
workloads="bilstm-sst5 transformer-sst5 minilm-sst2 lstm-multi30k transformer-multi30k"
objectives="ce cot"
python=${TORCH_PYTHON:-/work/venvs/torch/bin/python}
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) rounds=1 steps=2 warmup=1 ;;
        --rounds) rounds=$2; shift ;;
        --steps) steps=$2; shift ;;
        --warmup) warmup=$2; shift ;;
        --threads) threads=$2; shift ;;
        --workloads) workloads=$2; shift ;;
        --objectives) objectives=$2; shift ;;
        --python) python=$2; shift ;;
        --out) out=$2; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "vs_torch.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ -x "$python" ] || { echo "vs_torch.sh: no Python with torch at $python (set TORCH_PYTHON or --python)" >&2; exit 2; }
out=${out:-$(mktemp -d -t vs_torch.XXXXXX)}
mkdir -p "$out"
results="$out/results.jsonl"
: > "$results"
export RAYON_NUM_THREADS=$threads CANDLE_NUM_THREADS=$threads

echo "building benches/train_step.rs ..." >&2
exe=$(cargo bench --bench train_step --no-run --message-format=json 2>"$out/build.log" \
    | grep '"name":"train_step"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -n "$exe" ] && [ -x "$exe" ] || { echo "vs_torch.sh: build failed, see $out/build.log" >&2; cat "$out/build.log" >&2; exit 1; }

# Runs one case; appends its JSON line, or an error line, to $results.
run_case() {
    local side=$1 w=$2 o=$3 line log="$out/$1-$2-$3.log"
    local args=(--workload "$w" --objective "$o" --steps "$steps" --warmup "$warmup")
    if [ "$side" = cotext ]; then
        line=$("$exe" "${args[@]}" 2>"$log" | tail -1) || line=""
    else
        line=$("$python" benches/torch_ref.py "${args[@]}" 2>"$log" | tail -1) || line=""
    fi
    if [ -z "$line" ]; then
        local why
        why=$(tail -1 "$log" | tr '"\\' "''")
        line="{\"side\": \"$side\", \"workload\": \"$w\", \"objective\": \"$o\", \"error\": \"$why\"}"
    fi
    echo "$line" >> "$results"
    echo "  $line" >&2
}

for r in $(seq 1 "$rounds"); do
    echo "round $r of $rounds" >&2
    for w in $workloads; do
        for o in $objectives; do
            # Alternate which side goes first, so slow drift in the machine's state
            # does not always favour the same one.
            if [ $((r % 2)) -eq 1 ]; then
                run_case cotext "$w" "$o"; run_case pytorch "$w" "$o"
            else
                run_case pytorch "$w" "$o"; run_case cotext "$w" "$o"
            fi
        done
    done
done

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
torch_version=$("$python" -c 'import torch; print(torch.__version__)')
"$python" - "$results" "$(nproc)" "$cpu" "$torch_version" "$rounds" "$steps" "$warmup" "$threads" "$workloads" "$objectives" <<'EOF' | tee "$out/table.md"
import json, statistics, sys
path, nproc, cpu, torch_version, rounds, steps, warmup, threads, workloads, objectives = sys.argv[1:]
runs = [json.loads(l) for l in open(path) if l.strip()]

def cases(side, w, o):
    return [r for r in runs if r["side"] == side and r["workload"] == w and r["objective"] == o and "error" not in r]

def med(side, w, o, key):
    v = [r[key] for r in cases(side, w, o) if r.get(key) is not None]
    return statistics.median(v) if v else None

def peak(side, w, o):
    v = [r["peak_rss_mib"] for r in cases(side, w, o) if r.get("peak_rss_mib") is not None]
    return max(v) if v else None

def f(x, fmt):
    return "n/a" if x is None else format(x, fmt)

print(f"Machine: {nproc} CPUs ({cpu}); {threads} threads each side; PyTorch {torch_version} eager on the CPU. "
      f"Median of {rounds} round(s) of {steps} timed updates after {warmup} warm-up; peak RSS is the largest VmHWM. "
      "Tokens: non-pad input tokens (source + target for translation), synthetic ids.\n")
print("| workload | objective | cotext tokens/s | PyTorch tokens/s | cotext / PyTorch | cotext ms/update | PyTorch ms/update "
      "| cotext peak RSS | PyTorch peak RSS | COT/CE time, cotext | COT/CE time, PyTorch |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for w in workloads.split():
    for o in objectives.split():
        ct, pt = med("cotext", w, o, "tokens_per_s"), med("pytorch", w, o, "tokens_per_s")
        ratio = ct / pt if ct and pt else None
        cot_ce = {}
        for side in ("cotext", "pytorch"):
            a, b = med(side, w, "cot", "ms_per_update"), med(side, w, "ce", "ms_per_update")
            cot_ce[side] = f(a / b, ".2f") + "×" if o == "cot" and a and b else "—"
        cm, pm = peak("cotext", w, o), peak("pytorch", w, o)
        print(f"| {w} | {o} | {f(ct, ',.0f')} | {f(pt, ',.0f')} | {f(ratio, '.2f')}{'×' if ratio else ''} "
              f"| {f(med('cotext', w, o, 'ms_per_update'), ',.0f')} | {f(med('pytorch', w, o, 'ms_per_update'), ',.0f')} "
              f"| {f(cm, ',.0f')} MiB | {f(pm, ',.0f')} MiB | {cot_ce['cotext']} | {cot_ce['pytorch']} |")
errors = [r for r in runs if "error" in r]
for r in errors:
    print(f"\n{r['side']} {r['workload']} {r['objective']} failed: {r['error']}")
mismatch = set()
for w in workloads.split():
    for key in ("parameters", "tokens_per_update"):
        vals = {r[key] for r in runs if r["workload"] == w and key in r}
        if len(vals) > 1:
            mismatch.add(f"{w}: {key} differs between the sides: {sorted(vals)}")
for m in sorted(mismatch):
    print(f"\nwarning: {m}")
EOF
echo "raw results: $results" >&2
