"""Dashboard at scale: a synthetic 100,000-latent feature database served on loopback; search and paging latency.

The database is made with the feature database's own writer (`FeatureDatabase.create`, `add_explanation`,
`add_score`, `set_meta`), its `latents` rows inserted as `features collect` inserts them, with random
statistics, and an explanation of 3-6 words (from a 400-word vocabulary) for the first `--explained`. The script then
starts the real server (uvicorn, 127.0.0.1, port 0) and times over HTTP: 50 full-text searches (each a
word or a pair of words, seeded), the first and the last page by id and by density, and reports p50 and
p95 per kind. Goal: search p95 under 100 ms.

    python dashboard_search.py            # 100,000 latents, writes results/dashboard_search.json
    python dashboard_search.py --quick    # 2,000 latents, proves the script runs
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import add_arguments, goal, setup, write_result
from mechscope.features.database import FeatureDatabase

WORDS = [f"{a}{b}" for a in ("dig", "num", "cit", "nam", "ver", "adj", "pun", "cod", "mat", "yea", "mon", "day",
                             "the", "col", "sen", "pos", "neg", "que", "lis", "def")
         for b in ("it", "ber", "y", "e", "b", "ective", "ct", "e", "h", "r", "th", "s", "ital", "on", "ence",
                   "itive", "ation", "ry", "t", "ine")]
HIST_BINS = 70


def synthetic_database(path: Path, n_latents: int, n_explained: int, seed: int = 0) -> Path:
    """A complete feature database of `n_latents` latents, the first `n_explained` of them explained (every
    tenth explanation with a detection score).
    """
    rng = random.Random(seed)
    words = sorted(set(WORDS))
    db = FeatureDatabase.create(path, force=True)
    db.con.execute("PRAGMA synchronous = OFF")  # a throwaway file: no fsync per explanation
    rows = []
    for k in range(n_latents):
        density = 10 ** rng.uniform(-6, -1)
        hist = [0] * HIST_BINS
        hist[rng.randrange(HIST_BINS)] = max(1, int(density * 1e6))
        max_act = rng.uniform(0.1, 20.0)
        rows.append((k, int(density * 1e6), density, max_act, max_act / 3, max_act, json.dumps(hist), 1.0))
    with db.con:
        db.con.executemany("INSERT INTO latents VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.set_meta({"d_sae": n_latents, "model": "synthetic", "hook_name": "blocks.0.hook_resid_post",
                 "n_tokens": 1_000_000, "hist_edges": [-4 + 7 * i / HIST_BINS for i in range(HIST_BINS + 1)]})
    for k in range(n_explained):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 6)))
        eid = db.add_explanation(k, text, explainer="synthetic")
        if k % 10 == 0:
            db.add_score(eid, "detection", rng.random(), scorer="synthetic", n=20)
    db.set_meta({"complete": True})
    db.close()
    return path


def _server(db_path: Path):
    import uvicorn

    from mechscope.apps.dashboard.api import Sources
    from mechscope.apps.dashboard.server import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(Sources.scan([db_path])), host="127.0.0.1", port=0,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.02)
    return server, thread, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def _latency(client, urls: list[str]) -> dict[str, float]:
    samples = []
    for url in urls:
        start = time.perf_counter()
        r = client.get(url)
        samples.append(time.perf_counter() - start)
        r.raise_for_status()
    q = statistics.quantiles(samples, n=20, method="inclusive") if len(samples) > 1 else samples * 19
    return {"n": len(samples), "p50_ms": 1000 * statistics.median(samples), "p95_ms": 1000 * q[18],
            "max_ms": 1000 * max(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", type=int, default=None, help="latents in the database (default 100000; quick 2000)")
    parser.add_argument("--explained", type=int, default=None, help="latents with an explanation (default 10000; quick 500)")
    add_arguments(parser, repeats=1)
    args = parser.parse_args()
    setup(args)
    import httpx

    n = args.latents or (2000 if args.quick else 100_000)
    folder = Path(tempfile.mkdtemp(prefix="mechscope-dash-bench-"))
    start = time.perf_counter()
    n_explained = min(n, args.explained or (500 if args.quick else 10_000))
    db_path = synthetic_database(folder / "features.db", n, n_explained)
    build_s = time.perf_counter() - start
    print(f"built {n} latents in {build_s:.1f} s ({db_path.stat().st_size / 2**20:.0f} MiB)", file=sys.stderr)
    server, thread, url = _server(db_path)
    rng = random.Random(1)
    words = sorted(set(WORDS))
    queries = [" ".join(rng.sample(words, rng.choice((1, 2)))) for _ in range(50)]
    last = (n - 1) // 50 * 50
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            client.get("/api/sources").raise_for_status()
            check = client.get(f"/api/features/features/latents?sort=latent&offset={last}&limit=50").json()
            assert [r["latent"] for r in check["rows"]] == list(range(last, n)), "last page by id is wrong"
            search = _latency(client, [f"/api/features/features/search?q={q}&limit=20" for q in queries])
            pages = _latency(client, [f"/api/features/features/latents?sort={s}&order={o}&offset={off}&limit=50"
                                      for s, o in (("latent", "asc"), ("density", "desc"), ("max_act", "desc"),
                                                   ("score", "desc"))
                                      for off in (0, last, n // 2)] * 4)
            detail = _latency(client, [f"/api/features/features/latents/{rng.randrange(n)}" for _ in range(50)])
    finally:
        server.should_exit = True
        thread.join(10)
    result = {
        "settings": {"latents": n, "explained": n_explained, "queries": len(queries), "limit": 20},
        "build_s": build_s, "search": search, "pages": pages, "latent_detail": detail,
        "goals": [goal("search p95", search["p95_ms"], 100.0, "<=", "ms")],
        "table": {"columns": ["request", "n", "p50 ms", "p95 ms"],
                  "rows": [[k, v["n"], f"{v['p50_ms']:.1f}", f"{v['p95_ms']:.1f}"]
                           for k, v in (("search", search), ("list page", pages), ("latent page", detail))],
                  "caption": f"dashboard over HTTP on loopback, {n:,} latents"},
    }
    for kind in ("search", "pages", "latent_detail"):
        print(f"{kind}: p50 {result[kind]['p50_ms']:.1f} ms, p95 {result[kind]['p95_ms']:.1f} ms")
    write_result("dashboard_search", args, None, result)


if __name__ == "__main__":
    main()
