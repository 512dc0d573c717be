#!/usr/bin/env bash
# Train a per-layer transcoder set for every layer of the default model (SmolLM2-135M) and a
# cross-layer transcoder, evaluate both, and trace an example attribution graph with each.
#
# The defaults are the small run this 2-core machine affords (a few thousand tokens, narrow
# widths); the sizes are environment variables. A fuller run, for a machine with time to spare:
#   TOKENS=200000 EVAL_TOKENS=8192 PLT_WIDTH=4096 CLT_WIDTH=512 EPOCHS=2 CLT_EPOCHS=2 LR=1e-3 scripts/train_transcoders.sh
# (memory for the in-memory pairs: TOKENS * 30 layers * 576 * 8 bytes, 46 GB at 200k tokens:
# lower TOKENS and raise EPOCHS where memory is short).
# SKIP=1 trains skip transcoders (each adds a linear W_skip @ mlp_input) into $OUT/plt-skip instead;
# CLT=0 leaves out the cross-layer transcoder.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/transcoders}
TOKENS=${TOKENS:-4096}
EVAL_TOKENS=${EVAL_TOKENS:-1024}
EPOCHS=${EPOCHS:-8}
LR=${LR:-3e-3}
BATCH=${BATCH:-256}
PLT_WIDTH=${PLT_WIDTH:-512}
CLT_WIDTH=${CLT_WIDTH:-64}
CLT_EPOCHS=${CLT_EPOCHS:-4}
PROMPT=${PROMPT:-"The capital of the state containing Dallas is"}
MS=${MS:-.venv/bin/mechscope}
SKIP=${SKIP:-0}
CLT=${CLT:-1}
PLT=plt
SKIP_FLAG=()
if [ "$SKIP" = 1 ]; then PLT=plt-skip; SKIP_FLAG=(--skip); fi

$MS transcoders train --kind per_layer --architecture jumprelu --d-sae "$PLT_WIDTH" --tokens "$TOKENS" \
    --eval-tokens "$EVAL_TOKENS" --epochs "$EPOCHS" --lr "$LR" --batch-size "$BATCH" --out "$OUT/$PLT" \
    "${SKIP_FLAG[@]}"
$MS graph "$PROMPT" --transcoders "$OUT/$PLT" --json "$OUT/$PLT-graph.json" --html "$OUT/$PLT-graph.html" \
    --out "$OUT/$PLT-graph"
[ "$CLT" = 1 ] || exit 0
$MS transcoders train --kind cross_layer --architecture jumprelu --d-sae "$CLT_WIDTH" --tokens "$TOKENS" \
    --eval-tokens "$EVAL_TOKENS" --epochs "$CLT_EPOCHS" --lr "$LR" --batch-size "$BATCH" --out "$OUT/clt"
$MS graph "$PROMPT" --transcoders "$OUT/clt" --json "$OUT/clt-graph.json" --html "$OUT/clt-graph.html" \
    --out "$OUT/clt-graph"
