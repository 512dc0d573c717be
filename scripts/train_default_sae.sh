#!/usr/bin/env bash
# The default dictionary: a TopK SAE (k=32, 16x expansion: 9,216 latents) on layer 15
# hook_resid_post of SmolLM2-135M-Instruct, trained for 4 passes (1,953 steps of 1,024 tokens)
# over 500k cached tokens of the default offline corpus (Python docs + stdlib docstrings,
# extended with numpy's docstrings for more text), evaluated on the held-out split of the
# same corpus (about 21k tokens). On 2 shared CPU cores: caching about 45 min, training
# about 10 min, evaluation about 5 min.
#
#   scripts/train_default_sae.sh            # writes out/acts-smollm2-l15 and out/sae-smollm2-l15
#
# Every step resumes: re-running continues an interrupted cache and skips a finished one.
# Environment: MECHSCOPE (command, default .venv/bin/mechscope), OUT (default out),
# TOKENS (default 500000), EVAL_TOKENS (default 32768).
set -euo pipefail
cd "$(dirname "$0")/.."
MECHSCOPE=${MECHSCOPE:-.venv/bin/mechscope}
OUT=${OUT:-out}
TOKENS=${TOKENS:-500000}
EVAL_TOKENS=${EVAL_TOKENS:-32768}
ACTS="$OUT/acts-smollm2-l15"
SAE="$OUT/sae-smollm2-l15"

"$MECHSCOPE" -v sae cache --layer 15 --site resid_post --tokens "$TOKENS" --packages numpy --out "$ACTS"
RESUME=()
[ -d "$SAE/checkpoints" ] && RESUME=(--resume)  # an interrupted run continues, bit-identically
"$MECHSCOPE" -v sae train --acts "$ACTS" --arch topk --k 32 --expansion 16 --batch-size 1024 --lr 1e-3 \
    --epochs 4 --seed 0 --checkpoint-every 100 --out "$SAE" "${RESUME[@]}"
"$MECHSCOPE" -v sae eval "$SAE" --packages numpy --tokens "$EVAL_TOKENS" \
    --json "$SAE/eval.json" --png "$SAE/density.png" --force
