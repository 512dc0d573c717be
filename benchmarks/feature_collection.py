"""Feature collection throughput vs the bare forward pass to the dictionary's layer (goal: >= 0.8x).

Both runs read the same packed contexts of the same corpus with the same batch size. The bare
run calls the model up to the dictionary's site (`stop_at_layer`) and nothing else; collection
is `collect_features` (forward to the site, encoding, every statistic, a resume checkpoint at
the end of the pass); the weights hashes are computed before timing. Printed: tokens/s of each, their ratio, and the time of the final
database write (logit effects, neighbours, examples) on top. SAEDashboard is not compared:
`pip install sae-dashboard` would replace this environment's torch, transformers and
TransformerLens.

Usage:
    python benchmarks/feature_collection.py --dictionary out/sae-smollm2-l15 [--tokens 32768]
                                            [--batch-size 16] [--corpus pydoc] [--json out.json]
    python benchmarks/feature_collection.py --tiny       # a tiny random model and SAE, to check it runs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from mechscope.core.corpus import iter_token_contexts
from mechscope.core.provenance import weights_hash
from mechscope.dictionaries.streaming import site_activations
from mechscope.features import collect_features


def _tiny() -> tuple[object, object, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from mechscope.dictionaries import make_dictionary
    from tiny_lm import tiny_lm, write_corpus

    corpus = write_corpus(Path(tempfile.mkdtemp()), n_docs=60, words=80)
    return tiny_lm("llama"), make_dictionary("topk", d_in=64, d_sae=512, k=8, seed=0,
                                             hook_name="blocks.1.hook_resid_post"), str(corpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dictionary", default=None, help="dictionary folder")
    parser.add_argument("--model", default=None, help="model (default: the dictionary's, else the default model)")
    parser.add_argument("--corpus", default="pydoc")
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="tiny random model and dictionary (smoke run)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    if args.tiny:
        model, sae, corpus = _tiny()
        args.context_length = min(args.context_length, 32)
    else:
        from mechscope.core.loading import load_model
        from mechscope.dictionaries import load_dictionary

        if not args.dictionary:
            parser.error("--dictionary is required (or --tiny)")
        sae = load_dictionary(args.dictionary)
        model = load_model(args.model or sae.cfg.model_name)
        corpus = args.corpus
    T = args.context_length
    n_contexts = -(-args.tokens // (T - 1))
    batches = list(iter_token_contexts(model.tokenizer, corpus, T, batch_size=args.batch_size,
                                       max_contexts=n_contexts))
    n_tokens = sum(int(b.shape[0]) * (T - 1) for b in batches)

    site_activations(model, batches[0][:1], sae.cfg.hook_name)  # warm-up
    weights_hash(model), weights_hash(sae)  # cached on the objects: set-up, not throughput
    start = time.perf_counter()
    with torch.no_grad():
        for ids in batches:
            site_activations(model, ids, sae.cfg.hook_name)
    bare = time.perf_counter() - start

    marks: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        collect_features(model, sae, Path(folder) / "f.db", source=corpus, n_tokens=n_tokens, context_length=T,
                         batch_size=args.batch_size, checkpoint_contexts=n_contexts, progress=False,
                         on_checkpoint=lambda _: marks.append(time.perf_counter()))
        total = time.perf_counter() - start
    passed = (marks[-1] - start) if marks else total
    result = {"tokens": n_tokens, "batch_size": args.batch_size, "context_length": T,
              "bare_forward_tok_s": n_tokens / bare, "collection_tok_s": n_tokens / passed,
              "ratio": bare / passed, "final_write_s": total - passed, "d_sae": sae.cfg.d_sae,
              "hook_name": sae.cfg.hook_name, "model": model.cfg.name, "torch_threads": torch.get_num_threads()}
    print(f"{n_tokens} tokens, {sae.cfg.d_sae} latents at {sae.cfg.hook_name} of {model.cfg.name}")
    print(f"bare forward to the site: {result['bare_forward_tok_s']:10.0f} tok/s")
    print(f"feature collection:       {result['collection_tok_s']:10.0f} tok/s  "
          f"({result['ratio']:.2f}x the bare forward)")
    print(f"final database write:     {result['final_write_s']:10.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
