"""The dashboard over a feature database built from the default model (SmolLM2-135M): real tokens on the
feature page, the prompt view and steering equal the library's, token for token."""

from __future__ import annotations

import pytest
import torch
from dash_helpers import SHOTS, ServerThread, open_view

from mechscope.features import CollectConfig, FeatureDatabase, collect_features
from mechscope.features.steering import Add, from_latent, generate

pytestmark = pytest.mark.slow

PROMPT = "The Eiffel Tower is in the city of"


@pytest.fixture(scope="module")
def real(default_model, tmp_path_factory):
    from mechscope.apps.dashboard.api import Sources
    from mechscope.apps.dashboard.server import create_app
    from mechscope.dictionaries import make_dictionary, save_dictionary

    folder = tmp_path_factory.mktemp("real")
    sae = make_dictionary("relu", d_in=576, d_sae=128, seed=0, hook_name="blocks.6.hook_resid_post")
    with torch.no_grad():
        sae.W_enc.mul_(4.0)
        sae.b_enc.fill_(-1.0)  # sparse: each latent fires on a few percent of tokens
    save_dictionary(sae, folder / "sae")
    cfg = CollectConfig(top_k=8, n_intervals=4, per_interval=2, n_random=3, random_pool=64, window_left=12,
                        window_right=4)
    collect_features(default_model, sae, folder / "served" / "smollm2.db", source="default", n_tokens=3000,
                     context_length=64, config=cfg, progress=False, dictionary_path=folder / "sae")
    thread = ServerThread(create_app(Sources.scan([folder / "served"]), model_name="smollm2-135m", model=default_model))
    yield thread, folder / "served" / "smollm2.db", sae
    thread.stop()


def _sparse_latent(db: FeatureDatabase) -> int:
    """The live latent whose density is nearest 2% (a random dictionary has some that fire everywhere)."""
    return min(db.live_latents(), key=lambda k: abs(db.latent(k)["density"] - 0.02))


def test_feature_page_shows_real_tokens_as_the_database_stores_them(page, real) -> None:
    server, db_path, _ = real
    db = FeatureDatabase.open(db_path)
    latent = _sparse_latent(db)
    top = db.examples(latent, "top")
    open_view(page, f"{server.url}/#/features/smollm2/{latent}")
    page.wait_for_selector("#top .example")
    texts = page.eval_on_selector_all("#top .example:first-child .tok", "els => els.map(e => e.textContent)")
    assert texts == [t.replace("\n", "↵").replace("\t", "⇥") for t in top[0]["text"]]
    acts = page.eval_on_selector_all("#top .example .tok", "els => els.map(e => Number(e.dataset.act))")
    assert acts == [a for e in top for a in e["acts"]]
    page.screenshot(path=str(SHOTS / "dashboard_smollm2_feature.png"), full_page=True)


def test_prompt_view_and_steering_on_the_default_model(page, real, default_model) -> None:
    server, db_path, sae = real
    open_view(page, f"{server.url}/#/prompt?run=1&layer=5&head=3")
    page.wait_for_selector("#prompt-result[data-done=true] #attention")
    final = page.eval_on_selector_all("#lens tr:last-child td[data-token]", "els => els.map(e => e.dataset.token)")
    assert final[-1] == " Paris"
    page.hover("#attention .tok:last-child")
    page.screenshot(path=str(SHOTS / "dashboard_smollm2_prompt.png"), full_page=True)
    db = FeatureDatabase.open(db_path)
    latent = _sparse_latent(db)
    open_view(page, f"{server.url}/#/steer?prompt=I%20went%20to%20the&latent={latent}&coef=20&tokens=12&run=1")
    page.wait_for_selector("#steer-result[data-done=true] #steered", timeout=120_000)
    kwargs = {"max_new_tokens": 12, "seed": 0}
    plain = generate(default_model, "I went to the", [], **kwargs)
    steered = generate(default_model, "I went to the", [Add(from_latent(sae, latent, default_model), 20.0)], **kwargs)
    for key, g in (("unsteered", plain), ("steered", steered)):
        shown = [int(x) for x in page.get_attribute(f"#{key}", "data-token-ids").split(",")]
        assert shown == g.tokens[0, : int(g.lengths[0])].tolist(), key
    page.screenshot(path=str(SHOTS / "dashboard_smollm2_steering.png"), full_page=True)
