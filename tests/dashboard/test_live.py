"""Live views with a loaded model: lens table, latents per token, attention and steering equal the library's."""

from __future__ import annotations

import random

import httpx
from dash_helpers import SHOTS, open_view, word_lm

from mechscope.dictionaries import load_dictionary
from mechscope.features import FeatureDatabase, encode_contexts
from mechscope.features.steering import Add, from_latent, generate
from mechscope.methods.lens import logit_lens

PROMPT = "the cat sat on the mat because it was warm"


def _attrs(page, selector: str, attr: str) -> list[str]:
    return page.eval_on_selector_all(selector, f"els => els.map(e => e.getAttribute('{attr}'))")


def test_prompt_view_lens_latents_and_attention(page, live_server, dash_dir, tuned_lens) -> None:
    model = word_lm()
    sae = load_dictionary(FeatureDatabase.open(dash_dir / "features.db").meta()["dictionary_path"])
    open_view(page, live_server.url + "/#/prompt")
    page.fill("#prompt", PROMPT)
    page.select_option("#prompt-db", "features")
    page.click("#prompt-run")
    page.wait_for_selector("#prompt-result[data-done=true] #attention")
    lens = logit_lens(model, PROMPT, k=1)
    shown = [float(p) for p in _attrs(page, "#lens td[data-prob]", "data-prob")]
    assert shown == lens.top_probs[..., 0].flatten().tolist()
    assert _attrs(page, "#lens td[data-prob]", "data-token") == [t[0] for row in lens.top_tokens for t in row]
    tuned = logit_lens(model, PROMPT, k=1, translator=tuned_lens, lens="tuned")
    assert [float(p) for p in _attrs(page, "#tuned-lens td[data-prob]", "data-prob")] == tuned.top_probs[..., 0].flatten().tolist()
    assert tuned.top_probs.tolist() != lens.top_probs.tolist()
    ids = model.to_tokens(PROMPT)
    acts, _ = encode_contexts(model, sae, ids)
    for pos in range(ids.shape[1]):
        top = acts[0, pos].topk(5)
        expected = [i for i, a in zip(top.indices.tolist(), top.values.tolist(), strict=True) if a > 0]
        assert [int(x) for x in _attrs(page, f"#prompt-latents tr[data-pos='{pos}'] a", "data-latent")] == expected
    page.select_option("#attn-layer", "1")
    page.select_option("#attn-head", "2")
    page.wait_for_selector("#attention[data-layer='1'][data-head='2']")
    page.hover("#attention .tok[data-pos='5']")
    _, cache = model.run_with_cache(ids, names=["blocks.1.attn.hook_pattern"])
    weights = [float(w) for w in _attrs(page, "#attention .tok", "data-weight")]
    assert weights == cache["blocks.1.attn.hook_pattern"][0, 2, 5].tolist()
    page.screenshot(path=str(SHOTS / "dashboard_prompt.png"), full_page=True)


def test_steering_equals_the_library_token_for_token(page, live_server, dash_dir) -> None:
    model = word_lm()
    db = FeatureDatabase.open(dash_dir / "features.db")
    sae = load_dictionary(db.meta()["dictionary_path"])
    latent = db.live_latents()[0]
    open_view(page, f"{live_server.url}/#/steer?prompt=the%20cat%20sat&latent={latent}&coef=40&tokens=12&run=1")
    page.wait_for_selector("#steer-result[data-done=true] #steered")
    plain = generate(model, "the cat sat", [], max_new_tokens=12, seed=0)
    steered = generate(model, "the cat sat", [Add(from_latent(sae, latent, model), 40.0)], max_new_tokens=12, seed=0)
    shown = {k: [int(x) for x in page.get_attribute(f"#{k}", "data-token-ids").split(",")]
             for k in ("unsteered", "steered")}
    assert shown["unsteered"] == plain.tokens[0, : int(plain.lengths[0])].tolist()
    assert shown["steered"] == steered.tokens[0, : int(steered.lengths[0])].tolist()
    assert shown["steered"] != shown["unsteered"]  # a coefficient of 40 on a unit decoder row changes the text
    page.screenshot(path=str(SHOTS / "dashboard_steering.png"), full_page=True)


def test_live_routes_validate_and_fuzz_without_500(live_server) -> None:
    url = live_server.url
    assert httpx.post(url + "/api/model/prompt", json={"prompt": "x" * 2001}).status_code == 422
    assert httpx.post(url + "/api/model/attention", json={"prompt": "a b", "layer": 99, "head": 0}).status_code == 404
    r = httpx.post(url + "/api/model/steer", json={"prompt": "a", "db": "features", "latent": 4800, "coefficient": 1})
    assert r.status_code == 404 and "0..47" in r.json()["detail"]
    assert httpx.post(url + "/api/model/prompt", content=b"{not json").status_code == 422
    rng = random.Random(0)
    values = ["", "a b c", "x" * 3000, -1, 0, 3, 10**12, 1.5, None, [], {}, "features", "../features", "é", True]
    keys = ["prompt", "db", "k", "layer", "head", "latent", "coefficient", "max_new_tokens", "seed"]
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(60):
            route = rng.choice(["/api/model/prompt", "/api/model/attention", "/api/model/steer"])
            body = {k: rng.choice(values) for k in rng.sample(keys, rng.randint(0, len(keys)))}
            r = client.post(route, json=body)
            assert r.status_code < 500, (route, body, r.text)


def test_clicking_a_head_opens_its_attention_pattern(page, live_server) -> None:
    open_view(page, live_server.url + "/#/heads/heads")
    page.click("svg.heads[data-detector=induction] rect.head[data-layer='1'][data-head='3']")
    page.wait_for_selector("#prompt-result[data-done=true] #attention[data-layer='1'][data-head='3']")
    assert page.input_value("#attn-layer") == "1" and page.input_value("#attn-head") == "3"
