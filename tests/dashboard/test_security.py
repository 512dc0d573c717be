"""The server is loopback-only by default, validates every parameter and reaches nothing outside its sources."""

from __future__ import annotations

import random
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest

from mechscope.apps.dashboard.api import MAX_LIMIT
from mechscope.apps.dashboard.server import MAX_BODY_BYTES, create_app


def _other_address() -> str:
    """This machine's address on its default route (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))
        return s.getsockname()[0]


def test_cli_binds_loopback_by_default_and_prints_its_url(dash_dir) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "mechscope.apps.cli", "dashboard", str(dash_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 180  # start-up imports torch; slow on a loaded machine
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            url = match and match.group(0)
            assert line or proc.poll() is None, proc.stderr.read()
        assert url, "no URL printed"
        sources = httpx.get(url + "api/sources").json()["sources"]
        assert {s["kind"] for s in sources} == {"features", "patch", "heads", "graph"}
        port = int(url.rsplit(":", 1)[1].strip("/"))
        other = _other_address()
        assert not other.startswith("127.")
        with pytest.raises(OSError):
            socket.create_connection((other, port), timeout=2).close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_openapi_lists_every_route(server) -> None:
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert {"/api/sources", "/api/features/{db}/latents", "/api/features/{db}/latents/{latent}",
            "/api/features/{db}/search", "/api/patch/{doc}", "/api/heads/{doc}", "/api/graph/{doc}"} <= set(paths)
    assert paths["/api/features/{db}/latents"]["get"]["parameters"][4]["schema"]["maximum"] == MAX_LIMIT


@pytest.mark.parametrize("path", [
    "/static/../api.py", "/static/%2e%2e/api.py", "/static/..%2fapi.py", "/static/%2e%2e%2f%2e%2e%2fcore/files.py",
    "/api/patch/..%2F..%2Fetc%2Fpasswd", "/api/patch/../../etc/passwd", "/api/graph/%2Fetc%2Fpasswd",
    "/api/features/..%2Ffeatures.db/latents", "/api/heads/notes", "/api/patch/corpus",
    "/static//etc/passwd", "/api/features/features/latents/..%2F1",
])
def test_paths_outside_the_sources_are_4xx(server, path: str) -> None:
    r = httpx.get(server.url + path)
    assert 400 <= r.status_code < 500, (path, r.status_code)
    assert "root:" not in r.text and "import" not in r.text


@pytest.mark.parametrize("query", [
    "latents?limit=0", f"latents?limit={MAX_LIMIT + 1}", "latents?offset=-1", "latents?sort=bogus",
    "latents?order=up", "latents?limit=abc", "latents/-1", "latents/abc", "latents/99999", "latents/1.5",
    "latents/99999999999999999999", "search", "search?q=", "search?q=" + "x" * 201, 'search?q="unclosed',
    "search?q=a&limit=100000",
])
def test_bad_parameters_are_4xx_with_a_message(server, query: str) -> None:
    r = httpx.get(f"{server.url}/api/features/features/{query}")
    assert 400 <= r.status_code < 500, (query, r.status_code)
    assert r.json()["detail"]


def test_unknown_source_suggests_the_nearest(server) -> None:
    r = httpx.get(server.url + "/api/features/featurez/latents")
    assert r.status_code == 404 and "features" in r.json()["detail"]


def test_oversized_requests_are_refused(server) -> None:
    assert httpx.get(server.url + "/api/sources?x=" + "a" * 3000).status_code == 414
    r = httpx.post(server.url + "/api/sources", content=b"x" * (MAX_BODY_BYTES + 1))
    assert r.status_code == 413


def test_files_are_opened_read_only(sources) -> None:
    import sqlite3

    con = sources.features["features"].db.con
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        con.execute("DELETE FROM latents")


def test_fuzz_every_route_never_500(server, sources) -> None:
    app = create_app(sources)
    templates = [r.path for r in app.routes if getattr(r, "path", "").startswith("/api/")]
    rng = random.Random(0)
    words = ["features", "patch", "heads", "graph", "", "..", "%00", "-1", "0", "47", "48", "1e309", "NaN",
             "%2e%2e%2f", "a" * 90, "digits", '"', "*", "OR", "é", "null", "[]"]
    params = ["sort", "order", "offset", "limit", "q", "x"]
    seen = set()
    with httpx.Client(base_url=server.url) as client:
        for _ in range(400):
            path = re.sub(r"\{\w+\}", lambda _: rng.choice(words), rng.choice(templates))
            query = "&".join(f"{rng.choice(params)}={rng.choice(words)}" for _ in range(rng.randint(0, 3)))
            r = client.get(f"{path}?{query}")
            assert r.status_code < 500, (path, query, r.text)
            seen.add(r.status_code)
    assert 200 in seen and 404 in seen and 422 in seen
