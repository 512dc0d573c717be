"""Feature collection throughput vs the bare forward pass to the dictionary's layer (goal: >= 0.8x).

Both candidates read the same packed contexts of the same corpus with the same batch size, timed
interleaved over repeats: the bare run calls the model up to the dictionary's site and nothing
else; the collection pass is `collect_features` (forward to the site, encoding, every
statistic, the resume checkpoint at the end of the pass), stopped at that checkpoint so the
repeats time the pass only. The final database write (logit effects through the unembedding,
neighbours, example rows, the search index) is timed once, on top, by one full collection. The
weights hashes are computed before timing. SAEDashboard is not compared: `pip install
sae-dashboard` would replace this environment's torch, transformers and TransformerLens.
Results: benchmarks/results/feature_collection.json.

Usage:
    python benchmarks/feature_collection.py --dictionary out/sae-smollm2-l15 [--tokens 32768]
                                            [--batch-size 16] [--corpus pydoc] [--repeats 3]
    python benchmarks/feature_collection.py --tiny --quick   # a tiny random model and SAE, to check it runs
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import add_arguments, goal, print_table, setup, time_interleaved, write_result
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


class _PassDone(Exception):
    """Raised at the end-of-pass checkpoint to stop a timed collection before its final write."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dictionary", default=None, help="dictionary folder")
    parser.add_argument("--model", default=None, help="model (default: the dictionary's, else the default model)")
    parser.add_argument("--corpus", default="pydoc")
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="tiny random model and dictionary (smoke run)")
    add_arguments(parser, repeats=3)
    args = parser.parse_args()
    repeats = setup(args)

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
    weights_hash(model), weights_hash(sae)  # cached on the objects: set-up, not throughput
    folder = Path(tempfile.mkdtemp())

    def collect(path: Path, stop_after_pass: bool) -> None:
        def checkpoint(_: int) -> None:
            if stop_after_pass:
                raise _PassDone
        try:
            collect_features(model, sae, path, source=corpus, n_tokens=n_tokens, context_length=T,
                             batch_size=args.batch_size, checkpoint_contexts=n_contexts, progress=False,
                             on_checkpoint=checkpoint, force=True)
        except _PassDone:
            pass

    def bare() -> None:
        with torch.no_grad():
            for ids in batches:
                site_activations(model, ids, sae.cfg.hook_name)

    runs = itertools.count()
    candidates = {"bare forward to the site": bare,
                  "feature collection pass": lambda: collect(folder / f"pass{next(runs)}.db", True)}
    times = time_interleaved(candidates, repeats=repeats)
    print_table(f"feature collection, {n_tokens} tokens, {repeats} interleaved repeats", times,
                "bare forward to the site")
    start = time.perf_counter()
    collect(folder / "full.db", False)
    full_s = time.perf_counter() - start
    shutil.rmtree(folder, ignore_errors=True)
    bare_s, pass_s = (times[name]["median_s"] for name in candidates)
    final_write_s = full_s - pass_s
    ratio = bare_s / pass_s
    print(f"final database write: {final_write_s:.1f} s (a full collection took {full_s:.1f} s)")
    goals = [goal("collection pass throughput / bare forward to the site", ratio, 0.8, ">=")]
    table = {"columns": ["what", "tokens/s", "x bare forward"],
             "rows": [["bare forward to the site", f"{n_tokens / bare_s:,.0f}", "1.00"],
                      ["feature collection pass (forward, encoding, every statistic)", f"{n_tokens / pass_s:,.0f}",
                       f"{ratio:.2f}"],
                      ["final database write, once (logit effects, neighbours, examples, search index)",
                       f"{final_write_s:.1f} s", "-"]],
             "caption": f"{sae.cfg.d_sae} latents at {sae.cfg.hook_name} of {model.cfg.name}; {n_tokens:,} tokens "
                        f"of {corpus if not args.tiny else 'a tiny corpus'} in contexts of {T}, batch "
                        f"{args.batch_size}; median of {repeats} interleaved repeats, "
                        f"{torch.get_num_threads()} threads."}
    write_result("feature_collection", args, model, {
        "settings": {"tokens": n_tokens, "batch_size": args.batch_size, "context_length": T, "corpus": corpus,
                     "d_sae": sae.cfg.d_sae, "hook_name": sae.cfg.hook_name, "tiny": args.tiny},
        "timings": times, "goals": goals, "table": table,
        "final_write_s": final_write_s, "full_collection_s": full_s})


if __name__ == "__main__":
    main()
