"""Measured steering: sweep a coefficient and report concept incidence, fluency and KL on neutral text.

Per coefficient value:

- `keyword_incidence`: fraction of generations that contain any keyword (case-insensitive);
- `latent_incidence` / `latent_mean`: fraction of generations on whose generated tokens a concept latent
  fires, and its mean activation there, read by an unsteered pass over prompt + generation (so a clamp
  does not count itself);
- `perplexity`: `exp(mean NLL)` of the generated tokens under the unsteered model, given the prompt;
- `kl_neutral`: mean over the tokens of neutral texts of `KL(p_unsteered || p_steered)` of the
  next-token distributions (nats); steering limited to generated positions gives 0 here.

Example:
    >>> result = steering_sweep(model, ["I went to the"], lambda c: [Clamp(sae, 1234, c)], [0, 4, 8],
    ...                         concept=Concept(keywords=["bridge"], sae=sae, latent=1234))   # doctest: +SKIP
    >>> [round(p.keyword_incidence, 2) for p in result.points]                              # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechscope.core.errors import MechscopeError
from mechscope.core.provenance import provenance
from mechscope.core.scores import kl_divergence
from mechscope.dictionaries.base import Dictionary
from mechscope.features.steering.generate import Generation, generate
from mechscope.features.steering.interventions import Intervention, steering

NEUTRAL_TEXTS = (
    "The meeting was moved to Thursday afternoon because two people were travelling.",
    "Water boils at a lower temperature at high altitude, so cooking takes longer.",
    "She opened the window, sat down at the desk and started to write a letter.",
    "The report lists the number of visitors for each month of the last year.",
    "To install the package, run the command and then restart the program.",
    "The train leaves the station at seven and arrives in the city two hours later.",
)


@dataclass
class Concept:
    """What counts as the concept showing: any of `keywords` in the text, and/or `latent` of `sae` firing.

    Example:
        >>> from mechscope.dictionaries.relu import ReluSAE, ReluSAEConfig
        >>> sae = ReluSAE(ReluSAEConfig(d_in=16, d_sae=32, hook_name="blocks.0.hook_resid_post"), seed=0)
        >>> Concept(keywords=["bridge"], sae=sae, latent=3).keywords
        ['bridge']
        >>> Concept(keywords=["bridge"], sae=sae, latent=99)
        Traceback (most recent call last):
        ...
        mechscope.core.errors.MechscopeError: Latent 99 is out of range: this dictionary has latents 0..31.
    """

    keywords: Sequence[str] = ()
    sae: Dictionary | None = None
    latent: int | None = None

    def __post_init__(self) -> None:
        if (self.sae is None) != (self.latent is None):
            raise MechscopeError("A concept latent needs both sae=... and latent=....")
        if self.sae is not None and not 0 <= int(self.latent) < self.sae.cfg.d_sae:  # type: ignore[arg-type]
            raise MechscopeError(f"Latent {self.latent} is out of range: this dictionary has latents "
                                 f"0..{self.sae.cfg.d_sae - 1}.")


@dataclass
class SweepPoint:
    """The measurements at one coefficient value (see the module docstring).

    Example:
        >>> p = SweepPoint(coef=4.0, texts=["the bridge"], perplexity=12.5, kl_neutral=0.03, keyword_incidence=1.0)
        >>> p.coef, p.keyword_incidence, p.latent_incidence
        (4.0, 1.0, None)
    """

    coef: float | None  # None: the unsteered baseline
    texts: list[str]
    perplexity: float
    kl_neutral: float
    keyword_incidence: float | None = None
    latent_incidence: float | None = None
    latent_mean: float | None = None


@dataclass
class SweepResult:
    """One `SweepPoint` per coefficient, what was steered, and the settings and provenance.

    Example:
        >>> point = SweepPoint(coef=None, texts=["a road"], perplexity=10.0, kl_neutral=0.0)
        >>> result = SweepResult([point], interventions=[], prompts=["I went to the"], settings={"n": 1})
        >>> result.to_dict()["points"][0]["coef"], result.to_dict()["prompts"]
        (None, ['I went to the'])
    """

    points: list[SweepPoint]
    interventions: list[dict[str, Any]]
    prompts: list[str]
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"points": [asdict(p) for p in self.points], "interventions": self.interventions,
                "prompts": self.prompts, "settings": self.settings, "provenance": self.provenance}


def parse_values(spec: str) -> list[float]:
    """Coefficient values from `"a,b,c"`, `"A..B"` (5 even steps) or `"A..B:N"` (N even steps).

    Example:
        >>> parse_values("-4..4"), parse_values("0..10:3"), parse_values("1, 2.5")
        ([-4.0, -2.0, 0.0, 2.0, 4.0], [0.0, 5.0, 10.0], [1.0, 2.5])
    """
    try:
        if ".." in spec:
            span, _, count = spec.partition(":")
            lo, hi = (float(x) for x in span.split(".."))
            n = int(count) if count else 5
            if n < 2:
                return [lo]
            return [lo + (hi - lo) * i / (n - 1) for i in range(n)]
        return [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise MechscopeError(f"Cannot read coefficients {spec!r}: use 'a,b,c', 'A..B' or 'A..B:N'.") from None


def _sequences(model: Any, gen: Generation) -> tuple[Tensor, Tensor, list[int]]:
    """Right-padded prompt + generation ids, their mask, and each row's prompt length."""
    prompt = model.tokenize(gen.prompts)
    rows, starts = [], []
    for i, n_new in enumerate(gen.lengths.tolist()):
        n_prompt = int(prompt.lengths[i])
        rows.append(torch.cat([prompt.ids[i, :n_prompt], gen.tokens[i, :n_new]]))
        starts.append(n_prompt)
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids, mask, starts


@torch.no_grad()
def read_generation(model: Any, gen: Generation, concept: Concept | None) -> dict[str, float | None]:
    """Perplexity of the generated tokens and the concept latent's incidence, from one unsteered pass.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> from mechscope.dictionaries.relu import ReluSAE, ReluSAEConfig
        >>> sae = ReluSAE(ReluSAEConfig(d_in=16, d_sae=32, hook_name="blocks.0.hook_resid_post"), seed=0)
        >>> from mechscope.features.steering.generate import generate
        >>> gen = generate(model, ["the cat", "a dog"], max_new_tokens=3, stop_at_eos=False)
        >>> sorted(read_generation(model, gen, Concept(sae=sae, latent=3)))
        ['latent_incidence', 'latent_mean', 'perplexity']
    """
    ids, mask, starts = _sequences(model, gen)
    names = [concept.sae.cfg.hook_name] if concept is not None and concept.sae is not None else []
    logits, cache = model.run_with_cache(ids, names=names, attention_mask=mask)
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    nll, count, fired, acts = 0.0, 0, 0, []
    for i, start in enumerate(starts):
        end = int(mask[i].sum())
        if end <= start:
            continue
        targets = ids[i, start:end].to(logprobs.device)
        nll -= float(logprobs[i, start - 1:end - 1].gather(-1, targets[:, None]).sum())
        count += end - start
        if names:
            site = cache[names[0]][i, start:end]
            feature = concept.sae.encode(site.reshape(end - start, -1))[:, concept.latent]  # type: ignore[union-attr]
            fired += int((feature > 0).any())
            acts.append(feature.float())
    out: dict[str, float | None] = {"perplexity": math.exp(nll / count) if count else float("nan"),
                                    "latent_incidence": None, "latent_mean": None}
    if names:
        out["latent_incidence"] = fired / len(starts)
        out["latent_mean"] = float(torch.cat(acts).mean()) if acts else float("nan")
    return out


@torch.no_grad()
def neutral_kl(model: Any, texts: Sequence[str], interventions: Sequence[Intervention],
               reference: Tensor | None = None) -> tuple[float, Tensor]:
    """Mean over real tokens of `KL(p_unsteered || p_steered)` (nats); also returns the unsteered logits.

    Pass the returned logits back as `reference` to skip the unsteered run next time.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> from mechscope.features.steering.interventions import Add
        >>> push = Add(torch.randn(16), 4.0, hook_name="blocks.0.hook_resid_post")
        >>> kl, reference = neutral_kl(model, ["the cat sat on the mat"], [push])
        >>> kl > 0, reference.shape
        (True, torch.Size([1, 6, 9]))
        >>> neutral_kl(model, ["the cat sat on the mat"], [], reference)[0]        # no intervention: no change
        0.0
    """
    batch = model.tokenize(list(texts))
    if reference is None:
        reference = model(batch).float()
    with steering(model, interventions):
        steered = model(batch)
    kl = kl_divergence(reference, steered)
    mask = batch.attention_mask.to(kl.device).bool()
    return float(kl[mask].mean()), reference


def keyword_incidence(texts: Sequence[str], keywords: Sequence[str]) -> float:
    """Fraction of `texts` containing any keyword, case-insensitively.

    Example:
        >>> keyword_incidence(["The bridge", "a road", "BRIDGES"], ["bridge"])
        0.6666666666666666
    """
    lowered = [k.lower() for k in keywords]
    return sum(any(k in t.lower() for k in lowered) for t in texts) / max(len(texts), 1)


def steering_sweep(model: Any, prompts: str | Sequence[str], make: Callable[[float], Sequence[Intervention]],
                   coefs: Sequence[float], *, concept: Concept | None = None,
                   neutral_texts: Sequence[str] = NEUTRAL_TEXTS, n: int = 1, max_new_tokens: int = 30,
                   temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 8,
                   baseline: bool = False, progress: bool = True) -> SweepResult:
    """Generate from `prompts` (each `n` times) under `make(coef)` for each coefficient and measure it.

    With `baseline=True` the first point (`coef=None`) is the unsteered model, measured the same way.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> from mechscope.features.steering.interventions import Add
        >>> direction = torch.randn(16)
        >>> result = steering_sweep(model, "the cat", lambda c: [Add(direction, c, hook_name="blocks.0.hook_resid_post")],
        ...                         [0.0, 8.0], concept=Concept(keywords=["dog"]), neutral_texts=["a dog sat"],
        ...                         max_new_tokens=3, progress=False)
        >>> [p.coef for p in result.points], result.points[0].kl_neutral
        ([0.0, 8.0], 0.0)
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not coefs:
        raise MechscopeError("No coefficient values to sweep.")
    rows = [p for p in prompts for _ in range(n)]
    points, reference, described = [], None, []
    for coef in tqdm([None] * baseline + list(coefs), desc="steering sweep", disable=not progress):
        interventions = [] if coef is None else list(make(coef))
        described = [i.describe() for i in interventions] or described
        gen = generate(model, rows, interventions, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_p=top_p, seed=seed, batch_size=batch_size)
        reading = read_generation(model, gen, concept)
        kl, reference = neutral_kl(model, neutral_texts, interventions, reference)
        points.append(SweepPoint(
            coef=None if coef is None else float(coef), texts=gen.texts, perplexity=float(reading["perplexity"]), kl_neutral=kl,  # type: ignore[arg-type]
            keyword_incidence=keyword_incidence(gen.texts, concept.keywords) if concept and concept.keywords else None,
            latent_incidence=reading["latent_incidence"], latent_mean=reading["latent_mean"]))
    settings = {"n": n, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                "keywords": list(concept.keywords) if concept else [], "latent": concept.latent if concept else None,
                "neutral_texts": list(neutral_texts)}
    for d in described:
        d["coef"] = "swept"
    return SweepResult(points, described, prompts, settings, provenance(model, seed=seed))


def plot_sweep(result: SweepResult, title: str = "") -> Any:
    """One figure: concept incidence, perplexity and neutral KL against the coefficient.

    Example:
        >>> result = SweepResult([SweepPoint(0.0, ["a"], 10.0, 0.0, 0.0), SweepPoint(4.0, ["b"], 14.0, 0.2, 0.5)],
        ...                      interventions=[], prompts=["I went to the"], settings={})
        >>> type(plot_sweep(result, title="bridge")).__name__
        'Figure'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = [p for p in result.points if p.coef is not None]
    base = next((p for p in result.points if p.coef is None), None)
    coefs = [p.coef for p in swept]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for n, (key, label) in enumerate((("keyword_incidence", "keyword incidence"),
                                      ("latent_incidence", "latent incidence"))):
        values = [getattr(p, key) for p in swept]
        if any(v is not None for v in values):
            axes[0].plot(coefs, [v if v is not None else float("nan") for v in values], "o-", label=label,
                         color=f"C{n}")
            if base is not None and getattr(base, key) is not None:
                axes[0].axhline(getattr(base, key), ls="--", lw=1, color=f"C{n}", label=f"{label}, unsteered")
    axes[0].set_ylim(-0.05, 1.05)
    axes[0].set_ylabel("fraction of generations")
    axes[0].legend(fontsize=8)
    axes[1].plot(coefs, [p.perplexity for p in swept], "o-", color="C2")
    if base is not None:
        axes[1].axhline(base.perplexity, ls="--", lw=1, color="C2", label="unsteered")
        axes[1].legend(fontsize=8)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("perplexity (unsteered model)")
    axes[2].plot(coefs, [p.kl_neutral for p in swept], "o-", color="C3")
    axes[2].set_ylabel("KL on neutral text (nats)")
    for ax in axes:
        ax.set_xlabel("coefficient")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
