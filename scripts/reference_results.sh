#!/usr/bin/env bash
# The results the README quotes outside the benchmark tables, each written as JSON (with provenance)
# into docs/results/ by the command shown here, so every number there can be traced to a file:
#   the head detectors on SmolLM2 (induction heads), the tuned lens against the logit lens
#   (held-out KL per layer), and the reference dictionary's evaluation.
#
#   scripts/reference_results.sh          # about 15 minutes on 2 CPU cores
#
# The reference dictionary is the default SAE recipe (scripts/train_default_sae.sh) at a size this
# machine trains in minutes: 120k cached tokens instead of 500k. Environment: MECHSCOPE (command,
# default .venv/bin/mechscope), OUT (default out), TOKENS (default 120000).
set -euo pipefail
cd "$(dirname "$0")/.."
MECHSCOPE=${MECHSCOPE:-.venv/bin/mechscope}
OUT=${OUT:-out}
TOKENS=${TOKENS:-120000}
RESULTS=docs/results
mkdir -p "$RESULTS"

"$MECHSCOPE" heads --json "$RESULTS/heads-smollm2.json" --png "$RESULTS/heads-smollm2.png" --force
"$MECHSCOPE" lens train --out "$OUT/tuned-lens-smollm2" --steps 40 --no-progress \
    --json "$RESULTS/tuned-lens-smollm2.json" --png "$RESULTS/tuned-lens-smollm2.png" --force
MECHSCOPE="$MECHSCOPE" OUT="$OUT/reference" TOKENS="$TOKENS" EVAL_TOKENS=16384 scripts/train_default_sae.sh
cp "$OUT/reference/sae-smollm2-l15/eval.json" "$RESULTS/sae-smollm2-l15-reference.eval.json"
