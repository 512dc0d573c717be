"""Helpers of the dashboard tests: result files built by mechscope, a server thread, page loading."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "circuits"))

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
GRAPH_DB_LAYER = 1  # the graph layer whose transcoder has a served feature database


WORDS = ["<bos>", "<eos>", "<pad>"] + [f" {a}{b}" for a in ("ba", "co", "di", "fe", "go", "hu", "ki", "lo", "ma", "no",
                                                             "pe", "ra", "su")
                                      for b in ("n", "t", "re", "ll", "sk", "mp", "de", "r", "x")][:93]


def word_lm():
    """The tiny random Llama of `tiny_lm` with a tokenizer that also decodes (id -> a made-up word)."""
    from tiny_lm import HashTokenizer, tiny_lm

    class WordTokenizer(HashTokenizer):
        def decode(self, ids, skip_special_tokens: bool = False) -> str:
            ids = [int(i) for i in ids]
            return "".join(WORDS[i] for i in ids if not (skip_special_tokens and i < 3))

        def __len__(self) -> int:
            return len(WORDS)

    model = tiny_lm("llama")
    model.tokenizer = WordTokenizer()
    return model


def build_files(folder: Path) -> Path:
    """A feature database (tiny Llama + ReLU SAE, with an explanation and scores), a patch result,
    a heads table, a circuit-tracer graph and the feature database of its layer-1 transcoder, all
    written by mechscope's own code."""
    from circuit_helpers import random_transcoders

    from mechscope.circuits.attribution import attribute
    from mechscope.circuits.export import dictionary_links, graph_json
    from mechscope.dictionaries import make_dictionary, save_dictionary
    from mechscope.features import CollectConfig, FeatureDatabase, collect_features
    from mechscope.methods.heads import detect_heads
    from mechscope.methods.patching.result import PatchResult
    from tiny_lm import write_corpus
    from tiny_models import VOCAB, tiny_ids, tiny_model

    folder.mkdir(parents=True, exist_ok=True)
    model = word_lm()
    corpus = write_corpus(folder, n_docs=20, words=40)
    sae = make_dictionary("relu", d_in=64, d_sae=48, seed=1, hook_name="blocks.1.hook_resid_post")
    with torch.no_grad():
        sae.b_enc.fill_(-0.05)
    cfg = CollectConfig(top_k=5, n_intervals=3, per_interval=2, n_random=3, random_pool=40, window_left=5,
                        window_right=3, n_neighbours=4, n_logit_tokens=3, seed=3)
    db_path = folder / "features.db"
    save_dictionary(sae, folder.parent / "sae")
    collect_features(model, sae, db_path, source=corpus, context_length=24, config=cfg, progress=False,
                     dictionary_path=folder.parent / "sae")
    db = FeatureDatabase.open(db_path)
    live = db.live_latents()
    for latent, text, score in ((live[0], "numbers and digits", 0.8), (live[1], "the word after a comma", 0.35)):
        eid = db.add_explanation(latent, text, explainer="test:hand-written")
        db.add_score(eid, "detection", score, scorer="test", n=10)
        db.add_score(eid, "fuzzing", score / 2, scorer="test", n=10)
    db.close()
    gen = torch.Generator().manual_seed(0)
    tokens = ["<bos>", "When", " Mary", " and", " John", " went"]
    PatchResult(torch.randn(4, 6, generator=gen), by=("layer", "pos"), labels=[list(range(4)), tokens],
                site="resid_pre", method="activation", mode="denoise", clean=2.5, corrupt=-1.0
                ).to_json(folder / "patch.json")
    heads = detect_heads(tiny_model("llama"), seq_len=8, batch=2)
    (folder / "heads.json").write_text(json.dumps({"heads": [h.to_json() for h in heads]}))
    gmodel = tiny_model("llama")
    tcs = random_transcoders(gmodel)
    graph = attribute(gmodel, tcs, tiny_ids(1, 8), max_feature_nodes=60, batch_size=32)
    (folder / "graph.json").write_text(json.dumps(graph_json(graph, slug="tiny", scan="tiny", d_vocab=VOCAB,
                                                             dictionaries=dictionary_links(tcs))))
    # the database of layer 1's transcoder (word_lm has gmodel's weights): the graph's layer-1 nodes link to it
    collect_features(model, tcs.transcoders[GRAPH_DB_LAYER], folder / "transcoder_l1.db", source=corpus,
                     context_length=24, config=cfg, progress=False)
    (folder / "circuit.json").write_text(json.dumps(circuit_record(model, folder)))
    (folder / "notes.txt").write_text("not a result file")
    return folder


def circuit_record(model, folder: Path) -> dict:
    """`mechscope circuit --json`'s record (its own `discover`) of EAP over eight made-up word pairs."""
    import argparse
    import random

    from mechscope.apps.commands.circuit import discover

    rng = random.Random(0)
    records = []
    for _ in range(8):
        a = rng.sample(WORDS[3:], 4)
        records.append({"clean": "".join(a[:3]), "corrupt": "".join([a[3], *a[1:3]]), "answer": a[0], "wrong": a[3]})
    (folder / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    args = argparse.Namespace(task=str(folder / "pairs.jsonl"), method="eap", steps=5, top_n=30, signed=False,
                              greedy=False, corruption="paired", n_pairs=8, seed=0, batch_size=8, thresholds="0.01",
                              objective="kl", candidates=0, curve_points=0, no_progress=True)
    return discover(model, args)[0]


class ServerThread:
    """The real app on uvicorn in a background thread, on a free loopback port."""

    def __init__(self, app, host: str = "127.0.0.1") -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


def open_view(page, url: str) -> None:
    """Load `url` and wait until the router has rendered it."""
    page.goto(url)
    page.wait_for_selector("#app[data-ready=true]")


SHOTS = Path(__file__).parents[2] / "docs" / "images"
