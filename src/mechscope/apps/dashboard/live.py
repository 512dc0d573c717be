"""The dashboard's live views, with a loaded model: prompt (lens, latents per token), attention, steering.

Each answer comes from the library's own functions (`logit_lens`, `run_with_cache`,
`encode_contexts`, `steering.generate`), one request at a time (the model is not shared
across threads). A feature database's dictionary is the one its `meta.dictionary_path` names.

Example:
    >>> live = Live(model, sources)                                         # doctest: +SKIP
    >>> live.steer(SteerRequest(prompt="I went to the", db="features", latent=3, coefficient=8.0))  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from pydantic import BaseModel, Field

from mechscope.apps.dashboard.api import ID_PATTERN, NotFoundError, Sources
from mechscope.core import names
from mechscope.core.errors import BadInputError

MAX_PROMPT_CHARS = 2000
MAX_PROMPT_TOKENS = 128
MAX_NEW_TOKENS = 64


class PromptRequest(BaseModel):
    """The body of `POST /api/live/prompt`: a prompt, and the feature database whose latents to show.

    Example:
        >>> PromptRequest(prompt="The Eiffel Tower is in").k
        5
    """
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    db: str | None = Field(default=None, pattern=ID_PATTERN)
    k: int = Field(default=5, ge=1, le=20)


class PromptView(BaseModel):
    """The prompt view: tokens, the logit (and tuned) lens's top token per layer and position, top latents.

    Example:
        >>> PromptView(tokens=["Hi"], token_ids=[1], n_layers=1, n_heads=1, lens_layers=["L0"],
        ...            lens_top=[[["!", 0.5]]], tuned_top=None, latents=None).lens_top[0][0]
        ['!', 0.5]
    """
    tokens: list[str]
    token_ids: list[int]
    n_layers: int
    n_heads: int
    lens_layers: list[str]
    lens_top: list[list[list[Any]]]          # [layer][pos] -> [token, prob] of the logit lens's top token
    tuned_top: list[list[list[Any]]] | None  # the same for the tuned lens (when the server has one)
    latents: list[list[dict[str, Any]]] | None  # [pos] -> top latents {latent, act}


class AttentionRequest(BaseModel):
    """The body of `POST /api/live/attention`: a prompt and the head whose pattern to show.

    Example:
        >>> AttentionRequest(prompt="The cat sat", layer=3, head=1).head
        1
    """
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    layer: int = Field(ge=0, le=1024)
    head: int = Field(ge=0, le=1024)


class AttentionView(BaseModel):
    """One head's attention pattern on a prompt, `pattern[query][key]`.

    Example:
        >>> AttentionView(tokens=["a", "b"], layer=0, head=1, pattern=[[1.0, 0.0], [0.5, 0.5]]).pattern[1]
        [0.5, 0.5]
    """
    tokens: list[str]
    layer: int
    head: int
    pattern: list[list[float]]  # [query_pos, key_pos]


class SteerRequest(BaseModel):
    """The body of `POST /api/live/steer`: a prompt, a latent of a served dictionary and the coefficient to add.

    Example:
        >>> SteerRequest(prompt="I went to the", db="features", latent=12, coefficient=8.0).max_new_tokens
        20
    """
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    db: str = Field(pattern=ID_PATTERN)
    latent: int = Field(ge=0, le=2**31)
    coefficient: float = Field(ge=-1000, le=1000)
    max_new_tokens: int = Field(default=20, ge=1, le=MAX_NEW_TOKENS)
    seed: int = Field(default=0, ge=0, le=2**31)


class SteerView(BaseModel):
    """A steered generation next to the unsteered one, with the hook the latent's direction was added at.

    Example:
        >>> view = SteerView(prompt="I went to the", latent=12, coefficient=8.0, hook_name="blocks.15.hook_resid_post",
        ...                  unsteered={"text": " store", "token_ids": [2665]}, steered={"text": " park", "token_ids": [3164]})
        >>> view.steered["text"]
        ' park'
    """
    prompt: str
    latent: int
    coefficient: float
    hook_name: str
    unsteered: dict[str, Any]  # {text, token_ids}
    steered: dict[str, Any]


class Live:
    """The live views over `model` (a HookedModel), with dictionaries found through `sources`.

    Example:
        >>> from mechscope import load_model
        >>> model = load_model()                                            # doctest: +SKIP
        >>> live = Live(model, Sources.scan(["out/"]))                    # doctest: +SKIP
        >>> live.attention(AttentionRequest(prompt="The cat sat", layer=3, head=1)).tokens   # doctest: +SKIP
    """

    def __init__(self, model: Any, sources: Sources, tuned_lens: Any = None) -> None:
        self.model = model
        self.tuned_lens = tuned_lens
        self.sources = sources
        self.lock = threading.Lock()
        self._dictionaries: dict[str, Any] = {}

    def _ids(self, prompt: str) -> torch.Tensor:
        ids = self.model.to_tokens(prompt)[:1].cpu()
        if ids.shape[1] > MAX_PROMPT_TOKENS:
            raise BadInputError(f"the prompt has {ids.shape[1]} tokens; the dashboard reads at most {MAX_PROMPT_TOKENS}.")
        return ids

    def dictionary(self, db_id: str) -> Any:
        from mechscope.dictionaries import load_dictionary

        if db_id not in self._dictionaries:
            path = self.sources.feature_source(db_id).db.meta().get("dictionary_path")
            if not path:
                raise BadInputError(f"feature database {db_id!r} names no dictionary (collected without "
                                    "dictionary_path); latents cannot be computed or steered.")
            self._dictionaries[db_id] = load_dictionary(path)
        return self._dictionaries[db_id]

    def prompt(self, req: PromptRequest) -> PromptView:
        from mechscope.features.collect import encode_contexts
        from mechscope.methods.lens import logit_lens

        with self.lock:
            ids = self._ids(req.prompt)
            lens = logit_lens(self.model, ids, k=1)
            tuned = None
            if self.tuned_lens is not None:
                tuned = _top(logit_lens(self.model, ids, k=1, translator=self.tuned_lens, lens="tuned"))
            latents = None
            if req.db is not None:
                acts, _ = encode_contexts(self.model, self.dictionary(req.db), ids)
                top = acts[0].topk(min(req.k, acts.shape[-1]), dim=-1)
                latents = [[{"latent": int(i), "act": float(a)} for i, a in zip(ix, av, strict=True) if a > 0]
                           for ix, av in zip(top.indices.tolist(), top.values.tolist(), strict=True)]
        return PromptView(tokens=lens.tokens, token_ids=lens.token_ids, n_layers=self.model.cfg.n_layers,
                          n_heads=self.model.cfg.n_heads, lens_layers=lens.layers, lens_top=_top(lens),
                          tuned_top=tuned, latents=latents)

    def attention(self, req: AttentionRequest) -> AttentionView:
        cfg = self.model.cfg
        if req.layer >= cfg.n_layers or req.head >= cfg.n_heads:
            raise NotFoundError(f"L{req.layer}H{req.head} is outside {cfg.n_layers} layers x {cfg.n_heads} heads")
        name = names.pattern(req.layer)
        with self.lock:
            ids = self._ids(req.prompt)
            _, cache = self.model.run_with_cache(ids, names=[name], stop_at_layer=req.layer + 1)
        pattern = cache[name][0, req.head].float().tolist()
        return AttentionView(tokens=self.model.to_str_tokens(ids[0]), layer=req.layer, head=req.head, pattern=pattern)

    def steer(self, req: SteerRequest) -> SteerView:
        from mechscope.features.steering import Add, from_latent, generate

        sae = self.dictionary(req.db)
        if req.latent >= sae.cfg.d_sae:
            raise NotFoundError(f"latent {req.latent} is outside 0..{sae.cfg.d_sae - 1} in {req.db!r}")
        with self.lock:
            self._ids(req.prompt)
            direction = from_latent(sae, req.latent, self.model)
            kwargs = {"max_new_tokens": req.max_new_tokens, "seed": req.seed}
            plain = generate(self.model, req.prompt, [], **kwargs)
            steered = generate(self.model, req.prompt, [Add(direction, req.coefficient)], **kwargs)
        return SteerView(prompt=req.prompt, latent=req.latent, coefficient=req.coefficient,
                         hook_name=direction.hook_name, unsteered=_generation(plain), steered=_generation(steered))


def _top(lens: Any) -> list[list[list[Any]]]:
    """[layer][pos] -> [top token, its probability] of a `LensResult` read with k=1."""
    probs = lens.top_probs[..., 0].tolist()
    return [[[toks[p][0], probs[r][p]] for p in range(len(toks))] for r, toks in enumerate(lens.top_tokens)]


def _generation(g: Any) -> dict[str, Any]:
    n = int(g.lengths[0])
    return {"text": g.texts[0], "token_ids": g.tokens[0, :n].tolist()}
