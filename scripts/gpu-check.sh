#!/usr/bin/env bash
# The GPU check of cotext, in two halves (see docs/gpu.md):
#
#   bash scripts/gpu-check.sh                 # here, no GPU needed: build the CUDA binaries
#                                             # and stage them, with data, in .gpu/ (< 64 MiB)
#   bash scripts/gpu-check.sh --remote        # on the GPU machine, one command (~8 min):
#                                             # tests, CLI runs and benchmarks → $OUT/gpu-check.md
#
# Here: ../shared/gpu/build-cuda.sh builds `cotext`, the device tests
# (tests/device.rs) and the training benchmark (benches/train_step.rs) with
# `--features cuda` into target-cuda/ (the first build compiles candle's kernels with
# nvcc: ~15 min on 2 cores), strips them, and copies them, run-env.sh, Multi30k
# (de-en), SST-2 (with the SST-5 trees it reads) and all-MiniLM-L6-v2's config.json into .gpu/ (ignored by git;
# carry it). MiniLM's 90 MB weights do not fit: the MiniLM benchmark uses random
# weights of the same shapes on both sides (`--random-init`), which does not change
# the speed.
#
# There (--remote): checks that the binaries load; runs the device tests with
# COTEXT_TEST_DEVICE=cuda (fused loss kernel vs host, f32/bf16/f16; every model's
# training and decoding vs the host; mixed precision); trains and evaluates
# Multi30k (Transformer, ce and cot, f32 and bf16) and SST-2 (BiLSTM) end to end
# with `cotext train --device cuda`; then benchmarks, each case in its own
# process, cotext against PyTorch eager on the same card: tokens/s and peak GPU
# memory (nvidia-smi's memory.used, sampled every 20 ms, minus the idle level:
# the same measure for both sides) of the Transformer seq2seq (Multi30k shapes)
# and the MiniLM classifier, ce and cot, f32 and bf16; the fused loss kernel
# against the unfused path, in training and alone. Writes $OUT/gpu-check.md,
# $OUT/gpu-check.jsonl (raw lines) and $OUT/logs/. Exit status 0 when every test
# and run passed.
#
# Options (--remote): --steps N (20), --warmup W (3), --budget S (seconds before
# the remaining benchmark cases are skipped; 420), --quick (2 steps, 1 warm-up:
# a smoke run), --device SPEC (cuda), --python PATH (python3), --workloads LIST
# (the training benchmarks, comma-separated; all five train_step workloads),
# --precisions LIST (f32,bf16), --skip LIST (sections to leave out: tests, cli,
# bench, loss).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STAGE=$ROOT/.gpu

remote=0 steps=20 warmup=3 budget=420 device=cuda python=python3 skip=
workloads=transformer-multi30k,minilm-sst2,lstm-multi30k,transformer-sst5,bilstm-sst5
precisions=f32,bf16
while [ $# -gt 0 ]; do
    case "$1" in
        --remote) remote=1 ;;
        --steps) steps=$2; shift ;;
        --warmup) warmup=$2; shift ;;
        --budget) budget=$2; shift ;;
        --quick) steps=2 warmup=1 ;;
        --device) device=$2; shift ;;
        --python) python=$2; shift ;;
        --workloads) workloads=$2; shift ;;
        --precisions) precisions=$2; shift ;;
        --skip) skip=$2; shift ;;
        -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
        *) echo "gpu-check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# ------------------------------------------------------------------ build and stage
if [ "$remote" = 0 ]; then
    set -e
    BUILD=${CUDA_BUILD:-$ROOT/../shared/gpu/build-cuda.sh}
    [ -f "$BUILD" ] || { echo "gpu-check.sh: no $BUILD (the shared GPU recipe)" >&2; exit 2; }
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-cuda}
    mkdir -p "$CARGO_TARGET_DIR"
    log=$CARGO_TARGET_DIR/gpu-check-build.jsonl
    echo "building cotext, tests/device.rs and benches/train_step.rs with --features cuda into $CARGO_TARGET_DIR ..." >&2
    nice -n "${NICE:-15}" bash "$BUILD" --release --features cuda --bin cotext --test device --bench train_step \
        --message-format=json-render-diagnostics > "$log"
    # The artifacts' paths, from cargo's JSON lines.
    paths=$(python3 - "$log" <<'EOF'
import json, sys
found = {}
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        found[m["target"]["name"]] = m["executable"]
for name in ("cotext", "device", "train_step"):
    if name not in found:
        sys.exit(f"gpu-check.sh: cargo built no {name} executable")
    print(found[name])
EOF
)
    set -- $paths
    rm -rf "$STAGE"
    mkdir -p "$STAGE/bin" "$STAGE/data/multi30k" "$STAGE/data/sst2" "$STAGE/minilm"
    cp "$1" "$STAGE/bin/cotext"
    cp "$2" "$STAGE/bin/device-tests"
    cp "$3" "$STAGE/bin/train_step"
    strip --strip-debug "$STAGE"/bin/*
    cp "$ROOT/../shared/gpu/run-env.sh" "$STAGE/run-env.sh"
    DATA=${COTEXT_DATA:-$ROOT/../shared/datasets}
    for f in train val test_2016_flickr; do
        cp "$DATA/multi30k/$f.de" "$DATA/multi30k/$f.en" "$STAGE/data/multi30k/"
    done
    cp "$DATA"/sst2/*.tsv "$STAGE/data/sst2/"
    # SST-2's card reads the SST-5 trees for phrase labels.
    mkdir -p "$STAGE/data/sst5/trees"
    cp "$DATA"/sst5/trees/*.txt "$STAGE/data/sst5/trees/"
    MINILM=${COTEXT_MINILM:-${COTEXT_CACHE:-$HOME/.cache/cotext}/all-minilm-l6-v2}
    cp "$MINILM/config.json" "$STAGE/minilm/config.json"
    # Built from this commit (the remote report names it).
    git -C "$ROOT" rev-parse HEAD > "$STAGE/commit" 2>/dev/null || true
    total=$(du -sb "$STAGE" | cut -f1)
    du -ah "$STAGE" | sort -h | tail -8 >&2
    if [ "$total" -gt $((64 * 1024 * 1024)) ]; then
        echo "gpu-check.sh: .gpu/ holds $total bytes, over the 64 MiB that can be carried; compressing the binaries" >&2
        xz -T0 -6 "$STAGE"/bin/*
        total=$(du -sb "$STAGE" | cut -f1)
        [ "$total" -le $((64 * 1024 * 1024)) ] || { echo "gpu-check.sh: still $total bytes" >&2; exit 1; }
    fi
    echo "staged .gpu/ ($((total / 1024 / 1024)) MiB). On the GPU machine, carrying .gpu: bash scripts/gpu-check.sh --remote" >&2
    exit 0
fi

# ------------------------------------------------------------------ on the GPU machine
OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT/logs"
REPORT=$OUT/gpu-check.md
RAW=$OUT/gpu-check.jsonl
: > "$RAW"
START=$(date +%s)
failures=0
BIN=$STAGE/bin
[ -d "$BIN" ] || { echo "gpu-check.sh --remote: no $BIN; stage it here first (bash scripts/gpu-check.sh) and carry .gpu" | tee "$REPORT" >&2; exit 2; }
for f in "$BIN"/*.xz; do
    [ -e "$f" ] || continue
    "$python" -c 'import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3], "wb"))' "$f" && rm -f "$f"
done
chmod +x "$BIN"/* 2>/dev/null
run() { bash "$STAGE/run-env.sh" "$@"; }
wanted() { case ",$skip," in *",$1,"*) return 1 ;; esac; }
elapsed() { echo $(( $(date +%s) - START )); }
md() { printf '%s\n' "$*" >> "$REPORT"; }

gpu_index=${device#cuda}; gpu_index=${gpu_index#:}; gpu_index=${gpu_index:-0}
have_smi=0; command -v nvidia-smi >/dev/null 2>&1 && have_smi=1
mem_used() {
    if [ "$have_smi" = 1 ]; then nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$gpu_index" | head -1
    else echo ""; fi
}

{
    echo "# cotext GPU check"
    echo
    echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') by scripts/gpu-check.sh --remote, commit $(cat "$STAGE/commit" 2>/dev/null || echo unknown), device $device."
    echo
    echo '```text'
    if [ "$have_smi" = 1 ]; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv -i "$gpu_index" 2>&1
    else
        echo "nvidia-smi not found: peak memory is not measured"
    fi
    "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no cuda")' 2>&1
    echo '```'
    echo
} > "$REPORT"

# --- 1. the binaries load
missing=$(run ldd "$BIN/cotext" 2>&1 | grep 'not found' || true)
if [ -n "$missing" ]; then
    md "**The binary does not load**: ldd reports missing libraries (adjust run-env.sh):"
    md '```text'; md "$missing"; md '```'
    echo "missing libraries; see $REPORT" >&2
    exit 1
fi

# --- 2. device tests
if wanted tests; then
md "## Device tests (tests/device.rs, COTEXT_TEST_DEVICE=$device)"
md
COTEXT_TEST_DEVICE=$device run "$BIN/device-tests" > "$OUT/logs/device-tests.log" 2>&1
rc=$?
[ $rc = 0 ] || failures=$((failures + 1))
md "Exit status $rc ($(elapsed) s into the check)."
md '```text'; grep -E '^test |test result|panicked|assert|^failed|Error|error:' "$OUT/logs/device-tests.log" | head -60 >> "$REPORT"; md '```'
md
fi

# --- 3. end-to-end CLI runs on the device
if wanted cli; then
md "## cotext train on $device"
md
md "The f32 runs are repeated with \`--device cpu\` on the same machine: the last column is the"
md "largest relative difference between the two runs' logged losses (every training log line and"
md "every evaluation in metrics.jsonl)."
md
md "| run | status | wall s | result | losses vs the same run on the CPU |"
md "| --- | --- | --- | --- | ---: |"
# cli_case NAME TWIN ARGS...: trains on the device; TWIN=cpu also trains on the CPU
# and compares the logged losses.
cli_case() {
    local name=$1 twin=$2; shift 2
    local t0=$(date +%s) rc result diff="–"
    run "$BIN/cotext" train -q --data-dir "$STAGE/data" --device "$device" --out "$OUT/runs/$name" "$@" > "$OUT/logs/cli-$name.log" 2>&1
    rc=$?
    [ $rc = 0 ] || failures=$((failures + 1))
    local wall=$(( $(date +%s) - t0 ))
    result=$(grep -iE 'test (bleu|accuracy)|bleu|accuracy' "$OUT/logs/cli-$name.log" | tail -1 | tr '|' '/' | cut -c1-160)
    if [ "$twin" = cpu ] && [ $rc = 0 ]; then
        run "$BIN/cotext" train -q --data-dir "$STAGE/data" --device cpu --out "$OUT/runs/$name-cpu" "$@" > "$OUT/logs/cli-$name-cpu.log" 2>&1 \
            && diff=$("$python" - "$OUT/runs/$name/metrics.jsonl" "$OUT/runs/$name-cpu/metrics.jsonl" <<'EOF'
import json, sys
def losses(path):
    return [json.loads(l).get("loss") for l in open(path) if l.strip()]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
if len(a) != len(b) or None in a or None in b:
    print(f"logs differ ({len(a)} and {len(b)} lines)")
else:
    print(f"{max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)):.1e} ({len(a)} losses)")
EOF
) || diff="CPU run failed"
    fi
    md "| $name | $([ $rc = 0 ] && echo ok || echo "FAILED ($rc)") | $wall | ${result:-see logs/cli-$name.log} | $diff |"
}
M30K=(--config configs/multi30k-de-en-transformer.toml --set train.max_steps=60 --set train.eval_every=60
      --set data.eval_limit=100 --set decode.beam=2)
cli_case m30k-transformer-ce-f32 cpu "${M30K[@]}" --objective ce
cli_case m30k-transformer-cot-bf16 - "${M30K[@]}" --objective cot --precision bf16
cli_case m30k-lstm-cot-f32 cpu --config configs/multi30k-de-en-lstm.toml --set train.max_steps=60 \
    --set train.eval_every=60 --set data.eval_limit=100 --set decode.beam=2 --objective cot
cli_case sst2-bilstm-cot-bf16 - --config configs/sst2-bilstm.toml --objective cot --precision bf16 --set train.max_steps=60 --set train.eval_every=60 --set data.eval_limit=400
md
fi

# --- 4. benchmarks
bench_case() {  # side, then the benchmark's own arguments
    local side=$1; shift
    local log="$OUT/logs/bench-$side-$(echo "$*" | tr ' /' '__' | tr -cd '[:alnum:]_.-').log"
    local base peak_file line peak poller=""
    if [ $(elapsed) -gt "$budget" ]; then
        echo "{\"side\": \"$side\", \"skipped\": \"time budget\", \"args\": \"$*\"}" >> "$RAW"
        return
    fi
    base=$(mem_used)
    peak_file=$(mktemp)
    if [ "$have_smi" = 1 ]; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$gpu_index" -lms 20 > "$peak_file" 2>/dev/null &
        poller=$!
    fi
    if [ "$side" = cotext ]; then
        line=$(run "$BIN/train_step" --device "$device" --steps "$steps" --warmup "$warmup" "$@" 2>"$log" | tail -1)
    else
        line=$(COTEXT_MINILM="$STAGE/minilm" "$python" benches/torch_ref.py --device "$device" --steps "$steps" --warmup "$warmup" "$@" 2>"$log" | tail -1)
    fi
    [ -n "$poller" ] && { kill "$poller" 2>/dev/null; wait "$poller" 2>/dev/null; }
    peak=$(sort -n "$peak_file" | tail -1)
    rm -f "$peak_file"
    if [ -z "$line" ] || [ "${line:0:1}" != "{" ]; then
        failures=$((failures + 1))
        line="{\"side\": \"$side\", \"error\": $(tail -3 "$log" | "$python" -c 'import json,sys; print(json.dumps(sys.stdin.read()))'), \"args\": \"$*\"}"
    fi
    "$python" -c 'import json,sys; d=json.loads(sys.argv[1]); b,p=sys.argv[2],sys.argv[3]; d["peak_gpu_mib"]=(int(p)-int(b)) if b and p else None; d["args"]=sys.argv[4]; print(json.dumps(d))' \
        "$line" "$base" "$peak" "$*" >> "$RAW"
}
export COTEXT_MINILM="$STAGE/minilm"
wanted bench || workloads=
for w in ${workloads//,/ }; do
    for p in ${precisions//,/ }; do
        for o in ce cot; do
            extra=(); [ "$w" = minilm-sst2 ] && extra=(--random-init)
            bench_case cotext --workload "$w" --objective "$o" --precision "$p" "${extra[@]}"
            bench_case pytorch --workload "$w" --objective "$o" --precision "$p" "${extra[@]}"
        done
    done
done
# Fused loss kernel vs the unfused path: in training (the config's chunked_loss is
# true) and alone on Multi30k-sized (1920 × 8000) and large (4096 × 32000) logits.
# What dropout costs: cotext draws every mask on the host and copies it to the card.
case ",$workloads," in
    *,transformer-multi30k,*)
        for o in ce cot; do
            bench_case cotext --workload transformer-multi30k --objective "$o" --precision f32 --set model.dropout=0
            bench_case pytorch --workload transformer-multi30k --objective "$o" --precision f32 --dropout 0
        done ;;
esac
shapes=("1920 8000 f32" "4096 32000 f32" "4096 32000 bf16")
wanted loss || shapes=()
case ",$workloads," in
    *,transformer-multi30k,*)
        for o in ce cot; do
            bench_case cotext --workload transformer-multi30k --objective "$o" --precision f32 --chunked false
        done ;;
esac
for shape in "${shapes[@]}"; do
    set -- $shape
    for o in ce cot; do
        bench_case cotext --workload loss --objective "$o" --precision "$3" --rows "$1" --vocab "$2" --chunked true
        bench_case cotext --workload loss --objective "$o" --precision "$3" --rows "$1" --vocab "$2" --chunked false
        bench_case pytorch --workload loss --objective "$o" --precision "$3" --rows "$1" --vocab "$2"
    done
done

# --- 5. the tables
"$python" - "$RAW" "$steps" "$warmup" >> "$REPORT" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps, warmup = sys.argv[2], sys.argv[3]
ok = [r for r in rows if "tokens_per_s" in r]
bad = [r for r in rows if "tokens_per_s" not in r]

def fmt(x, d=0):
    return "–" if x is None else f"{x:,.{d}f}"

def chunk_flag(r):
    """--chunked as given to train_step (None: the config's train.chunked_loss)."""
    a = r.get("args", "")
    return True if "--chunked true" in a else False if "--chunked false" in a else None

def no_dropout(r):
    return "dropout" in r.get("args", "")

def find(side, chunked=None, ablated=False, **kw):
    """The result of `side` with these fields (and, for cotext, this --chunked;
    `ablated`: the dropout-free case)."""
    for r in ok:
        if r["side"] == side and all(r.get(k) == v for k, v in kw.items()) \
                and (side != "cotext" or chunk_flag(r) == chunked) and no_dropout(r) == ablated:
            return r
    return None

print("## Training throughput and peak GPU memory: cotext vs PyTorch eager\n")
print(f"One process per case; {warmup} warm-up and {steps} timed updates (COT: two forward and backward")
print("passes per update), AdamW, the synthetic batches of benches/train_step.rs. Tokens/s counts source")
print("+ target tokens (Multi30k shapes: 64 pairs of up to 30 + 30 tokens, vocabulary 8000) or input")
print("tokens (classifiers; MiniLM with random weights of all-MiniLM-L6-v2's shapes). Peak memory: nvidia-smi memory.used,")
print("sampled every 20 ms, minus the idle level (CUDA context included, PyTorch's cache included);")
print("PyTorch's own max_memory_allocated in the last column. bf16 = cotext's `--precision bf16`")
print("vs torch.autocast(bfloat16), f32 weights and optimizer on both sides.\n")
print("| workload | objective | precision | cotext tok/s | PyTorch tok/s | cotext / PyTorch | cotext peak MiB | PyTorch peak MiB | PyTorch allocated MiB |")
print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
workloads = list(dict.fromkeys(r["workload"] for r in rows if r.get("workload") not in (None, "loss")))
for w in workloads:
    for p in ("f32", "bf16"):
        for o in ("ce", "cot"):
            c = find("cotext", workload=w, objective=o, precision=p)
            t = find("pytorch", workload=w, objective=o, precision=p)
            if not c and not t:
                continue
            ratio = c["tokens_per_s"] / t["tokens_per_s"] if c and t else None
            print(f"| {w} | {o} | {p} | {fmt(c and c['tokens_per_s'])} | {fmt(t and t['tokens_per_s'])} | "
                  f"{fmt(ratio, 2)} | {fmt(c and c.get('peak_gpu_mib'))} | {fmt(t and t.get('peak_gpu_mib'))} | "
                  f"{fmt(t and t.get('max_memory_allocated_mib'))} |")

print("\n## What dropout costs\n")
print("transformer-multi30k, f32, with the config's dropout (0.1) and without it (cotext `--set model.dropout=0`,")
print("PyTorch `--dropout 0`); cotext draws its masks on the host and copies them to the card.\n")
print("| objective | cotext tok/s with / without | PyTorch tok/s with / without |")
print("| --- | ---: | ---: |")
for o in ("ce", "cot"):
    c, c0 = find("cotext", workload="transformer-multi30k", objective=o, precision="f32"), \
        find("cotext", ablated=True, workload="transformer-multi30k", objective=o, precision="f32")
    t, t0 = find("pytorch", workload="transformer-multi30k", objective=o, precision="f32"), \
        find("pytorch", ablated=True, workload="transformer-multi30k", objective=o, precision="f32")
    print(f"| {o} | {fmt(c and c['tokens_per_s'])} / {fmt(c0 and c0['tokens_per_s'])} | "
          f"{fmt(t and t['tokens_per_s'])} / {fmt(t0 and t0['tokens_per_s'])} |")

print("\n## Fused loss kernel vs the unfused path\n")
print("Training (transformer-multi30k, f32): `train.chunked_loss = true` (on CUDA the fused kernel) vs false (plain candle ops).\n")
print("| objective | fused tok/s | unfused tok/s | fused / unfused | fused peak MiB | unfused peak MiB |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for o in ("ce", "cot"):
    f = find("cotext", workload="transformer-multi30k", objective=o, precision="f32")
    u = find("cotext", chunked=False, workload="transformer-multi30k", objective=o, precision="f32")
    ratio = f["tokens_per_s"] / u["tokens_per_s"] if f and u else None
    print(f"| {o} | {fmt(f and f['tokens_per_s'])} | {fmt(u and u['tokens_per_s'])} | {fmt(ratio, 2)} | "
          f"{fmt(f and f.get('peak_gpu_mib'))} | {fmt(u and u.get('peak_gpu_mib'))} |")
print("\nThe loss alone (forward + backward on random logits, every tenth target padding), ms per call:\n")
print("| rows × vocab | precision | objective | fused ms | unfused ms | PyTorch ms | fused peak MiB | unfused peak MiB | PyTorch peak MiB |")
print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for n, v, p in ((1920, 8000, "f32"), (4096, 32000, "f32"), (4096, 32000, "bf16")):
    for o in ("ce", "cot"):
        f = find("cotext", chunked=True, workload="loss", objective=o, precision=p, rows=n, vocab=v)
        u = find("cotext", chunked=False, workload="loss", objective=o, precision=p, rows=n, vocab=v)
        t = find("pytorch", workload="loss", objective=o, precision=p, rows=n, vocab=v)
        print(f"| {n} × {v} | {p} | {o} | {fmt(f and f['ms_per_update'], 2)} | {fmt(u and u['ms_per_update'], 2)} | "
              f"{fmt(t and t['ms_per_update'], 2)} | {fmt(f and f.get('peak_gpu_mib'))} | "
              f"{fmt(u and u.get('peak_gpu_mib'))} | {fmt(t and t.get('peak_gpu_mib'))} |")
if bad:
    print("\n## Cases that did not produce a result\n")
    for r in bad:
        print(f"- {r.get('side')} {r.get('args')}: {r.get('skipped') or r.get('error')}")
EOF
md
md "Finished in $(elapsed) s; $failures failure(s). Raw lines: gpu-check.jsonl; logs: logs/."
echo "gpu-check: $failures failure(s); report in $REPORT" >&2
[ "$failures" = 0 ]
