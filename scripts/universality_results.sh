#!/usr/bin/env bash
# Feature universality results, each written as JSON (with provenance) and a plot into docs/results/:
#
#   match-synthetic.json        two TopK dictionaries (128 latents, k=3) of the synthetic benchmark
#                               (64 true features), seeds 1 and 2: decoder cosine, activation correlation
#                               on 4,096 synthetic samples, and how many true features both recover.
#   match-smollm2-seeds.json    two SmolLM2-135M layer-15 resid_post TopK SAEs (k=32, 9,216 latents),
#                               seeds 0 and 1: decoder cosine, and activation correlation on the same text.
#   match-smollm2-gemma3.json   the seed-0 SmolLM2 SAE against a Gemma 3 270M layer-9 resid_post TopK SAE
#                               (k=32, 10,240 latents) trained with the same recipe: activation correlation
#                               on the same text, Gemma's tokens aligned to SmolLM2's by character spans.
#   match-smollm2-gemma3-null.json   its chance level: the same statistics with Gemma's aligned tokens
#                               rolled out of alignment by half the text.
#
#   scripts/universality_results.sh
#
# On 2 shared CPU cores a fresh run takes roughly 90 minutes, judging by the steps run one by one
# (caching Gemma's activations about 20, training each real-model SAE about 15, each activation match
# about 10); with the caches and SAEs in place, about 10 minutes. Both real-model SAEs follow the reference recipe (scripts/reference_results.sh): 120k cached
# tokens of the default corpus (train split, with numpy's docstrings), TopK k=32, 16x expansion, 4 epochs
# of 1,024-token batches, lr 1e-3. Every step skips what is already there (the caches resume).
# Environment: MECHSCOPE (command, default .venv/bin/mechscope), PYTHON (default .venv/bin/python),
# OUT (default out), RESULTS (default docs/results), MATCH_TOKENS (tokens of text for activation
# correlation, default 16384), MATCH_CORPUS (default pydoc).
set -euo pipefail
cd "$(dirname "$0")/.."
MECHSCOPE=${MECHSCOPE:-.venv/bin/mechscope}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-out}
MATCH_TOKENS=${MATCH_TOKENS:-16384}
MATCH_CORPUS=${MATCH_CORPUS:-pydoc}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RESULTS=${RESULTS:-docs/results}
mkdir -p "$RESULTS" "$OUT/universality"

# 1. Synthetic benchmark, seeds 1 and 2 (the recipe of tests/features/test_universality.py).
"$PYTHON" - "$OUT/universality" "$RESULTS" <<'EOF'
import json
import sys
from pathlib import Path

import torch

from mechscope.core.files import figure_png, write_bytes, write_json
from mechscope.core.provenance import __version__, weights_hash
from mechscope.dictionaries import Trainer, TrainerConfig, load_dictionary, make_dictionary, save_dictionary
from mechscope.dictionaries.synthetic import SyntheticData, max_cosine_similarities
from mechscope.features.universality import activation_match, decoder_match, plot_match

out, results = Path(sys.argv[1]), Path(sys.argv[2])
data = SyntheticData(seed=0)
saes = []
for seed in (1, 2):
    folder = out / f"synthetic-topk-seed{seed}"
    if not (folder / "sae_weights.safetensors").exists():
        sae = make_dictionary("topk", d_in=data.d_model, d_sae=128, seed=seed, k=3)
        Trainer(sae, TrainerConfig(total_steps=1500, lr=3e-3, seed=seed, progress=False, log_every=1500)).fit(
            SyntheticData(seed=0).batches(512, 1500))
        save_dictionary(sae, folder)
    saes.append(load_dictionary(folder).eval())
a, b = saes
truth = data.features
best_a = max_cosine_similarities(truth, a.W_dec.detach())
best_b = max_cosine_similarities(truth, b.W_dec.detach())
both = [i for i in range(len(truth)) if best_a[i] > 0.9 and best_b[i] > 0.9]
unit = lambda W: W / W.norm(dim=1, keepdim=True)  # noqa: E731
arg_a = (unit(truth.double()) @ unit(a.W_dec.detach().double()).t()).argmax(1)
arg_b = (unit(truth.double()) @ unit(b.W_dec.detach().double()).t()).argmax(1)
result = {"a": str(out / "synthetic-topk-seed1"), "b": str(out / "synthetic-topk-seed2"), "d_sae_a": 128, "d_sae_b": 128,
          "decoder": decoder_match(a.W_dec, b.W_dec, threshold=0.9)}
x = SyntheticData(seed=0).sample(4096)
with torch.no_grad():
    result["activations"] = activation_match(a.encode(x), b.encode(x), threshold=0.9)
result["activations"]["tokens"] = 4096
for key in ("decoder", "activations"):
    pairs = {r: c for r, c, _ in result[key]["hungarian_pairs"]}
    result[key]["true_features_paired"] = sum(pairs[int(arg_a[i])] == int(arg_b[i]) for i in both)
result["true_features"] = {"n": len(truth), "recovered_by_a": int((best_a > 0.9).sum()),
                           "recovered_by_b": int((best_b > 0.9).sum()), "recovered_by_both": len(both),
                           "recovery_threshold": 0.9}
result["provenance"] = {"seed": [1, 2], "mechscope_version": __version__, "torch_version": torch.__version__,
                        "synthetic_data": {"seed": 0, "n_features": len(truth), "d_model": data.d_model},
                        "dictionary_a_sha256": weights_hash(a), "dictionary_b_sha256": weights_hash(b),
                        "training": {"architecture": "topk", "k": 3, "d_sae": 128, "steps": 1500, "batch": 512,
                                     "lr": 3e-3}}
write_json(results / "match-synthetic.json", result, force=True)
write_bytes(results / "match-synthetic.png",
            figure_png(plot_match(result, "synthetic benchmark: TopK seeds 1 vs 2")), force=True)
for key in ("decoder", "activations"):
    r = result[key]
    print(f"synthetic {key}: mean max A->B {r['mean_max_a_to_b']:.3f}, B->A {r['mean_max_b_to_a']:.3f}, "
          f"Hungarian mean {r['hungarian_mean']:.3f}, above 0.9: {r['fraction_above_threshold']:.1%}, "
          f"true features paired {r['true_features_paired']} of {len(both)} recovered by both")
EOF

# 2. SmolLM2-135M: the reference SAE (seed 0) and the same recipe with seed 1.
SMOL_ACTS="$OUT/small/acts-smollm2-l15"
SMOL_A="$OUT/small/sae-smollm2-l15"
SMOL_B="$OUT/universality/sae-smollm2-l15-seed1"
SAE_RECIPE=(--arch topk --k 32 --expansion 16 --batch-size 1024 --lr 1e-3 --epochs 4 --no-progress)
"$MECHSCOPE" -v sae cache --layer 15 --site resid_post --tokens 120000 --packages numpy --out "$SMOL_ACTS"
[ -f "$SMOL_A/sae_weights.safetensors" ] || \
    "$MECHSCOPE" -v sae train --acts "$SMOL_ACTS" "${SAE_RECIPE[@]}" --seed 0 --out "$SMOL_A"
[ -f "$SMOL_B/sae_weights.safetensors" ] || \
    "$MECHSCOPE" -v sae train --acts "$SMOL_ACTS" "${SAE_RECIPE[@]}" --seed 1 --out "$SMOL_B"
"$MECHSCOPE" features match "$SMOL_A" "$SMOL_B" --activations --corpus "$MATCH_CORPUS" --tokens "$MATCH_TOKENS" \
    --threshold 0.7 --json "$RESULTS/match-smollm2-seeds.json" --png "$RESULTS/match-smollm2-seeds.png" --force

# 3. Gemma 3 270M, layer 9 of 18 (SmolLM2's layer 15 is of 30), the same recipe; matched against SmolLM2's.
GEMMA_ACTS="$OUT/universality/acts-gemma3-l9"
GEMMA="$OUT/universality/sae-gemma3-l9"
"$MECHSCOPE" -v sae cache --model gemma3-270m --layer 9 --site resid_post --tokens 120000 --packages numpy \
    --out "$GEMMA_ACTS"
[ -f "$GEMMA/sae_weights.safetensors" ] || \
    "$MECHSCOPE" -v sae train --acts "$GEMMA_ACTS" "${SAE_RECIPE[@]}" --seed 0 --out "$GEMMA"
"$MECHSCOPE" features match "$SMOL_A" "$GEMMA" --activations --model-b gemma3-270m --corpus "$MATCH_CORPUS" \
    --tokens "$MATCH_TOKENS" --threshold 0.7 \
    --json "$RESULTS/match-smollm2-gemma3.json" --png "$RESULTS/match-smollm2-gemma3.png" --force

# 4. Chance level of the cross-model match: the same text, Gemma's aligned tokens rolled by half the tokens.
"$PYTHON" - "$SMOL_A" "$GEMMA" "$MATCH_CORPUS" "$MATCH_TOKENS" "$RESULTS/match-smollm2-gemma3-null.json" <<'EOF'
import sys

from mechscope.core.corpus import iter_documents
from mechscope.core.files import write_json
from mechscope.core.loading import load_model
from mechscope.core.provenance import provenance, weights_hash
from mechscope.dictionaries import load_dictionary
from mechscope.features.universality import aligned_activations, shifted_baseline

path_a, path_b, corpus, tokens, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
sae_a, sae_b = load_dictionary(path_a), load_dictionary(path_b)
model_a, model_b = load_model(sae_a.cfg.model_name), load_model(sae_b.cfg.model_name)
acts_a, acts_b = aligned_activations(model_a, sae_a, model_b, sae_b, iter_documents(corpus), tokens)
result = {"a": path_a, "b": path_b, "shifted": shifted_baseline(acts_a, acts_b, threshold=0.7),
          "provenance": provenance(model_a, dictionary_a_sha256=weights_hash(sae_a), dictionary_b_sha256=weights_hash(sae_b),
                                   model_b=model_b.cfg.name, model_b_weights_sha256=weights_hash(model_b), corpus=corpus)}
write_json(out, result, force=True)
r = result["shifted"]
print(f"chance level (B rolled by {r['shift']} of {r['tokens']} tokens): mean max A->B {r['mean_max_a_to_b']:.3f}, "
      f"B->A {r['mean_max_b_to_a']:.3f}, best of A above 0.7: {r['fraction_best_a_above_threshold']:.1%}")
EOF
