"""Dashboard fixtures: real result files built by mechscope from tiny models, one real server on
loopback and one Debian Chromium per session. Every page fails its test on any request to a
non-loopback address or any console error (see `page`)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from dash_helpers import CHROMIUM, CHROMIUM_ARGS, LOOPBACK, ServerThread, build_files, word_lm  # noqa: E402


@pytest.fixture(scope="session")
def dash_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="mechscope-dash-"))
    yield build_files(folder / "served")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def sources(dash_dir: Path):
    from mechscope.apps.dashboard.api import Sources

    return Sources.scan([dash_dir])


@pytest.fixture(scope="session")
def server(sources) -> ServerThread:
    from mechscope.apps.dashboard.server import create_app

    thread = ServerThread(create_app(sources))
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def tuned_lens():
    """A tuned lens of the tiny model that differs from the logit lens (seeded random translators)."""
    from mechscope.methods.tuned_lens import TunedLens

    lens = TunedLens.for_model(word_lm())
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in lens.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return lens


@pytest.fixture(scope="session")
def live_server(sources, tuned_lens) -> ServerThread:
    """The same sources with the tiny model and a tuned lens loaded (prompt, attention and steering views)."""
    from mechscope.apps.dashboard.server import create_app

    thread = ServerThread(create_app(sources, model_name="tiny-llama", model=word_lm(), tuned_lens=tuned_lens))
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        user_data = tempfile.mkdtemp(prefix="mechscope-chromium-")
        context = p.chromium.launch_persistent_context(user_data, executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                       headless=True, viewport={"width": 1280, "height": 900})
        yield context
        context.close()
        shutil.rmtree(user_data, ignore_errors=True)


@pytest.fixture
def page(browser):
    """A fresh tab that records console errors and aborts (and records) any non-loopback request."""
    tab = browser.new_page()
    errors: list[str] = []
    outside: list[str] = []
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))

    def guard(route) -> None:
        url = urlparse(route.request.url)
        if url.scheme in ("data", "about", "file") or url.hostname in LOOPBACK:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    tab.route("**/*", guard)
    yield tab
    tab.close()
    assert not outside, f"requests to non-loopback addresses: {outside}"
    assert not errors, f"console errors: {errors}"


