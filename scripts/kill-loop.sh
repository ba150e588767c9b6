#!/usr/bin/env bash
# The kill -9 loop of docs/reliability.md: trains a tiny SST-5
# BiLSTM, kills it with SIGKILL at seeded random times (during start-up, steps and
# checkpoint saves alike), resumes it (or starts it again when it died before its
# first checkpoint), and checks that every round ends with weights and optimizer
# state equal, bit for bit, to an uninterrupted run's, and that metrics.jsonl is
# readable. Prints the counts; exits 1 on any torn or divergent resume.
#
#   scripts/kill-loop.sh [KILLS]        (default 50; env: SEED, COTEXT_DATA, COTEXT_BIN)
set -euo pipefail
cd "$(dirname "$0")/.."

KILLS="${1:-50}"
SEED="${SEED:-18}"
BIN="${COTEXT_BIN:-target/release/cotext}"
DATA="${COTEXT_DATA:-$(cd .. && pwd)/shared/datasets}"
[ -x "$BIN" ] || { echo "kill-loop: no $BIN (cargo build --release first)" >&2; exit 2; }
[ -d "$DATA/sst5" ] || { echo "kill-loop: no sst5 under $DATA (set COTEXT_DATA)" >&2; exit 2; }
DATA="$(cd "$DATA" && pwd)"
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
export HF_HOME="$work/hf" HF_ENDPOINT="http://127.0.0.1:9"
# A checkpoint after every step (checkpoint_every = 1, dev every 3 updates), so
# kills land in saves often, in both kinds of save. The uninterrupted reference
# run (ref.toml) saves only at evaluations: saving must not change training.
cat > ref.toml <<TOML
[data]
dataset = "sst5"
data_dir = "$DATA"
max_len = 24
train_limit = 160
eval_limit = 16
test_split = ""

[model]
kind = "bilstm"
embed_dim = 16
hidden = 16

[train]
objective = "cot"
batch_size = 8
max_steps = 80
eval_every = 3
log_every = 1
TOML
{ cat ref.toml; echo "checkpoint_every = 1"; } > tiny.toml

checkpoint_file() { # run, file: the live checkpoint's file (no jq needed)
  echo "$1/$(sed -n 's/.*"dir": *"\(ckpt-[0-9]*\)".*/\1/p' "$1/state.json")/$2"
}

"$BIN" train -q --config ref.toml --out ref > /dev/null 2>&1
RANDOM="$SEED"
kills=0 torn=0 divergent=0 rounds=0 restarts=0 resumes=0
started="$(date +%s)"
while [ "$kills" -lt "$KILLS" ]; do
  rounds=$((rounds + 1))
  run="run$rounds"
  while :; do
    if [ -f "$run/state.json" ]; then
      args=(--resume --out "$run"); resumes=$((resumes + 1))
    else
      args=(--config tiny.toml --out "$run"); restarts=$((restarts + 1))
    fi
    "$BIN" train -q "${args[@]}" > "$work/log" 2>&1 &
    pid=$!
    # 0 to 1.5 s: start-up takes about half a second, then 80 steps of a few
    # hundredths with a save after each. Every other round's first start is
    # killed within 0.4 s, mostly before its first checkpoint.
    if [ "${args[0]}" = --config ] && [ $((rounds % 2)) -eq 1 ]; then
      sleep "$(printf '0.%03d' $((RANDOM % 400)))"
    else
      sleep "$(printf '0.%03d' $((RANDOM % 1000)))" "$(printf '0.%03d' $((RANDOM % 500)))"
    fi
    if [ "$kills" -lt "$KILLS" ] && kill -9 "$pid" 2> /dev/null; then
      kills=$((kills + 1))
      { wait "$pid"; } 2> /dev/null || true
      continue
    fi
    status=0
    { wait "$pid"; } 2> /dev/null || status=$?
    [ "$status" -eq 0 ] && break
    if [ "$status" -eq 137 ]; then kills=$((kills + 1)); continue; fi
    echo "round $rounds: cotext train ${args[*]} failed ($status):" >&2
    cat "$work/log" >&2
    torn=$((torn + 1))
    break
  done
  [ -f "$run/state.json" ] || continue
  if ! cmp -s "$(checkpoint_file ref model.safetensors)" "$(checkpoint_file "$run" model.safetensors)" ||
     ! cmp -s "$(checkpoint_file ref optim.safetensors)" "$(checkpoint_file "$run" optim.safetensors)" ||
     ! cmp -s "$(checkpoint_file ref best.safetensors)" "$(checkpoint_file "$run" best.safetensors)"; then
    echo "round $rounds: final or best weights differ from the uninterrupted run" >&2
    divergent=$((divergent + 1))
  fi
  # Every line whole (the reader refuses a bad line before the last one) and the
  # last one ended.
  if ! "$BIN" plot --run "$run" --out "$work/curves.png" > /dev/null 2>&1 ||
     [ "$(tail -c 1 "$run/metrics.jsonl" | od -An -c | tr -d ' ')" != '\n' ]; then
    echo "round $rounds: metrics.jsonl has an unreadable line" >&2
    divergent=$((divergent + 1))
  fi
  rm -rf "$run"
done
echo "kill-loop: $kills kills -9 in $rounds rounds ($resumes resumes, $restarts fresh starts) in $(( $(date +%s) - started )) s: $torn torn, $divergent divergent"
[ "$torn" -eq 0 ] && [ "$divergent" -eq 0 ]
