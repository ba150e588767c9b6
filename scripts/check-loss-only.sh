#!/usr/bin/env bash
# The loss-only build of the README's "Cargo features" section: what a model that
# depends on `cotext = { version = "0.1", default-features = false }` compiles.
# Checks that
#   1. cotext's own dependencies are then only candle-core, serde, rayon and
#      num-traits, plus gemm (the fused attention kernel calls it; on x86-64 with
#      its AVX-512 kernels turned on): all
#      already candle-core dependencies;
#   2. none of the CLI's or the other rooms' crates is anywhere in the graph
#      (tokenizers is, but only through candle-core 0.11, which depends on it
#      unconditionally for its GGUF tokenizer);
#   3. `examples/reuse_loss.rs` builds and the loss tests pass without `full`.
# Exits 1 on the first failure.
#
#   scripts/check-loss-only.sh          (cargo flags: --release, as the tests)
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check-loss-only: $*" >&2; exit 1; }
tree() { cargo tree --no-default-features -e normal "$@"; }

direct="$(tree --depth 1 --prefix none | awk 'NR > 1 { print $1 }' | sort -u | tr '\n' ' ')"
case "$direct" in
    "candle-core num-traits rayon serde " | "candle-core gemm num-traits rayon serde ") ;;
    *) fail "the loss-only build depends directly on: $direct(expected candle-core [gemm] num-traits rayon serde)" ;;
esac

all="$(tree --prefix none | awk '{ print $1 }' | sort -u)"
for crate in candle-nn candle-transformers plotters hf-hub clap indicatif ctrlc anyhow ureq csv toml; do
    if grep -qx "$crate" <<<"$all"; then
        fail "$crate is in the loss-only dependency graph: $(tree -i "$crate" --prefix none | tr '\n' ' ')"
    fi
done
# Whatever depends on tokenizers, it must not be cotext itself.
if grep -qx tokenizers <<<"$all"; then
    users="$(tree -i tokenizers --depth 1 --prefix none | awk 'NR > 1 { print $1 }' | sort -u | tr '\n' ' ')"
    [ "$users" = "candle-core " ] || fail "tokenizers is pulled in by: $users(expected only candle-core)"
fi
packages="$(tree --prefix none | awk '{ print $1, $2 }' | sort -u | wc -l)"
echo "check-loss-only: $packages packages in the graph; direct dependencies: $direct"

cargo build --release --no-default-features --example reuse_loss
cargo test --release --no-default-features --lib --test loss_golden --test loss_invariance
