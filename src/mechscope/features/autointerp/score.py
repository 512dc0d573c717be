"""Scorers: how well an explanation predicts a latent's activations on held-out examples.

- detection: the model is shown plain excerpts (activating and non-activating) and says which
  ones the latent fires on; score = balanced accuracy.
- fuzzing: activating excerpts, each with its true firing tokens marked or (seeded coin) as many
  wrong, non-firing tokens marked; the model says which markings are right; balanced accuracy.
- simulation: the model predicts a 0-10 activation per token; score = Pearson correlation over
  all tokens of all excerpts pooled (OpenAI's and delphi's "all at once" definition).

Balanced accuracy `= (TP / P + TN / N) / 2`. Held-out data: `interval` examples whose token is
not among the `top` examples the explainer saw (activating), and `random` examples
(non-activating).

Example:
    >>> balanced_accuracy([True, True, False, False], [True, False, False, False])
    0.75
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mechscope.features.autointerp.client import ChatModel
from mechscope.features.autointerp.prompts import (
    PROMPT_VERSION,
    detection_messages,
    fuzzing_messages,
    simulation_messages,
)
from mechscope.features.database import FeatureDatabase, FeatureDatabaseError

METHODS = ("detection", "fuzzing", "simulation")


def balanced_accuracy(truth: Sequence[bool], guess: Sequence[bool]) -> float:
    """Balanced accuracy `(TP / P + TN / N) / 2`; a class with no members counts as 0.5 on its side.

    Example:
        >>> balanced_accuracy([True, False], [True, True]), balanced_accuracy([True, True], [True, True])  # no negatives
        (0.5, 0.75)
    """
    pos = [g for t, g in zip(truth, guess, strict=True) if t]
    neg = [not g for t, g in zip(truth, guess, strict=True) if not t]
    tpr = sum(pos) / len(pos) if pos else 0.5
    tnr = sum(neg) / len(neg) if neg else 0.5
    return (tpr + tnr) / 2


def pooled_pearson(predicted: Sequence[Sequence[float]], true: Sequence[Sequence[float]]) -> float | None:
    """Pearson correlation of all tokens of all excerpts pooled; None when either side is constant.

    Example:
        >>> pooled_pearson([[0, 1], [2]], [[0, 2], [4]])
        1.0
    """
    x = [float(v) for row in predicted for v in row]
    y = [float(v) for row in true for v in row]
    if len(x) != len(y):
        raise ValueError("predicted and true activations differ in length")
    n = len(x)
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def parse_yes_no(reply: str, n: int) -> list[bool]:
    """Answers `N: yes|no` for N = 1..n; a missing or unreadable line counts as no.

    Example:
        >>> parse_yes_no("1: yes\\n2) No\\n4: yes", 3)
        [True, False, False]
    """
    out = [False] * n
    for m in re.finditer(r"^\W*(\d+)\s*[:.)\-]\s*(yes|no|true|false|1|0)\b", reply, flags=re.I | re.M):
        i = int(m.group(1)) - 1
        if 0 <= i < n:
            out[i] = m.group(2).lower() in ("yes", "true", "1")
    return out


def parse_activations(reply: str, n: int) -> list[float]:
    """Answers `N: value` for N = 0..n-1, clipped to [0, 10]; a missing line counts as 0.

    Example:
        >>> parse_activations("0: 3\\n1\\t12\\n", 3)
        [3.0, 10.0, 0.0]
    """
    out = [0.0] * n
    for m in re.finditer(r"^\W*(\d+)\s*[:\t.)\-]\s*(\d+(?:\.\d+)?)", reply, flags=re.M):
        i = int(m.group(1))
        if 0 <= i < n:
            out[i] = min(max(float(m.group(2)), 0.0), 10.0)
    return out


@dataclass
class HeldOut:
    """Held-out excerpts of a latent: activating and non-activating, each `{text, acts}`.

    Example:
        >>> data = HeldOut([{"text": [str(i)], "acts": [float(i)]} for i in range(1, 7)], [{"text": ["a"], "acts": [0.0]}])
        >>> [e["acts"][0] for e in data.subset(3, 0).activating], len(data.subset(3, 0).non_activating)
        ([2.0, 4.0, 6.0], 0)
    """

    activating: list[dict[str, Any]]
    non_activating: list[dict[str, Any]]

    def subset(self, n_activating: int | None, n_non_activating: int | None) -> HeldOut:
        """At most `n_activating` activating excerpts spread evenly over the intervals (they are ordered by
        activation), and the first `n_non_activating` non-activating ones."""
        act = self.activating
        if n_activating is not None and len(act) > n_activating:
            step = len(act) / n_activating
            act = [act[int(i * step + step / 2)] for i in range(n_activating)]
        non = self.non_activating if n_non_activating is None else self.non_activating[:n_non_activating]
        return HeldOut(act, non)


@dataclass
class Score:
    """One scorer's result: `value` (None when undefined), number of items and the raw detail.

    Example:
        >>> Score("detection", 0.75, 4)
        Score(method='detection', value=0.75, n=4, detail={})
    """

    method: str
    value: float | None
    n: int
    detail: dict[str, Any] = field(default_factory=dict)


def held_out(db: FeatureDatabase, latent: int) -> HeldOut:
    """Interval examples the explainer did not see, and random non-activating examples.

    Example:
        >>> from mechscope.features.export import from_neuronpedia
        >>> acts = [{"tokens": ["in", " 1984"], "values": [0, 3.0], "bin_contains": 3.0, "mechscope_token_index": 1},
        ...         {"tokens": ["by", " 1990"], "values": [0, 2.0], "bin_contains": 2.0, "mechscope_kind": "interval",
        ...          "mechscope_interval": 0, "mechscope_token_index": 5},
        ...         {"tokens": ["a", " cat"], "values": [0, 0], "mechscope_kind": "random", "mechscope_token_index": 8}]
        >>> db = from_neuronpedia({"features": [{"feature_index": 0, "activations": acts}]}, "features.db")
        >>> data = held_out(db, 0)
        >>> [e["text"] for e in data.activating], [e["text"] for e in data.non_activating]
        ([['by', ' 1990']], [['a', ' cat']])
    """
    seen = {e["token_index"] for e in db.examples(latent, "top")}
    act = [e for e in db.examples(latent, "interval") if e["token_index"] not in seen and e["act"] > 0]
    return HeldOut(act, db.examples(latent, "random"))


def _batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def score_detection(client: ChatModel, explanation: str, data: HeldOut, batch: int = 10, seed: int = 0) -> Score:
    """Detection: `client` says which shuffled plain excerpts the latent fires on; balanced accuracy.

    Example:
        >>> class Scripted:                                # says yes to excerpts that mention a year
        ...     name = "scripted"
        ...     def chat(self, messages, max_tokens=256):
        ...         lines = messages[-1]["content"].splitlines()[4:-2]
        ...         return "\\n".join(f"{n}: {'yes' if '19' in l else 'no'}" for n, l in enumerate(lines, 1))
        >>> data = HeldOut([{"text": ["in", " 1984"]}], [{"text": ["a", " cat"]}, {"text": ["the", " dog"]}])
        >>> score = score_detection(Scripted(), "years", data)
        >>> score.value, score.n
        (1.0, 3)
    """
    items = [(e["text"], True) for e in data.activating] + [(e["text"], False) for e in data.non_activating]
    random.Random(seed).shuffle(items)
    guesses: list[bool] = []
    replies = []
    for chunk in _batches(items, batch):
        reply = client.chat(detection_messages(explanation, [t for t, _ in chunk]), max_tokens=8 * len(chunk))
        replies.append(reply)
        guesses += parse_yes_no(reply, len(chunk))
    truth = [t for _, t in items]
    value = balanced_accuracy(truth, guesses) if items else None
    return Score("detection", value, len(items), {"truth": truth, "guesses": guesses, "replies": replies})


def score_fuzzing(client: ChatModel, explanation: str, data: HeldOut, batch: int = 10, seed: int = 0) -> Score:
    """Fuzzing: `client` says whether each activating excerpt's marked tokens (true or seeded wrong) are right.

    Example:
        >>> class Scripted:                                # says yes when a year is marked
        ...     name = "scripted"
        ...     def chat(self, messages, max_tokens=256):
        ...         lines = messages[-1]["content"].splitlines()[4:-2]
        ...         return "\\n".join(f"{n}: {'yes' if '<< 19' in l else 'no'}" for n, l in enumerate(lines, 1))
        >>> data = HeldOut([{"text": ["in", " 1984"], "acts": [0.0, 2.0]}] * 4, [])
        >>> score = score_fuzzing(Scripted(), "years", data)
        >>> score.value, score.n
        (1.0, 4)
    """
    rng = random.Random(seed)
    items = []
    for e in data.activating:
        firing = [i for i, a in enumerate(e["acts"]) if a > 0]
        quiet = [i for i, a in enumerate(e["acts"]) if a <= 0]
        correct = rng.random() < 0.5 or len(quiet) < len(firing)
        chosen = set(firing) if correct else set(rng.sample(quiet, len(firing)))
        items.append((e["text"], [1.0 if i in chosen else 0.0 for i in range(len(e["acts"]))], correct))
    guesses: list[bool] = []
    replies = []
    for chunk in _batches(items, batch):
        reply = client.chat(fuzzing_messages(explanation, [(t, m) for t, m, _ in chunk]), max_tokens=8 * len(chunk))
        replies.append(reply)
        guesses += parse_yes_no(reply, len(chunk))
    truth = [c for _, _, c in items]
    value = balanced_accuracy(truth, guesses) if items else None
    return Score("fuzzing", value, len(items), {"truth": truth, "guesses": guesses, "replies": replies})


def score_simulation(client: ChatModel, explanation: str, data: HeldOut) -> Score:
    """Simulation: `client` predicts 0-10 per token; Pearson correlation with the true activations, pooled.

    Example:
        >>> class Scripted:                                # predicts 9 on years, 0 elsewhere
        ...     name = "scripted"
        ...     def chat(self, messages, max_tokens=256):
        ...         lines = messages[-1]["content"].splitlines()[4:-2]
        ...         return "\\n".join(f"{n}: {9 if '19' in l else 0}" for n, l in enumerate(lines))
        >>> data = HeldOut([{"text": ["in", " 1984"], "acts": [0.0, 2.0]}], [{"text": ["a", " cat"], "acts": [0.0, 0.0]}])
        >>> score = score_simulation(Scripted(), "years", data)
        >>> round(score.value, 6), score.n
        (1.0, 4)
    """
    excerpts = data.activating + data.non_activating
    predicted, true, replies = [], [], []
    for e in excerpts:
        reply = client.chat(simulation_messages(explanation, e["text"]), max_tokens=8 * len(e["text"]) + 8)
        replies.append(reply)
        predicted.append(parse_activations(reply, len(e["text"])))
        true.append(e["acts"])
    value = pooled_pearson(predicted, true)
    return Score("simulation", value, sum(len(t) for t in true), {"predicted": predicted, "replies": replies})


def score_explanation(db: FeatureDatabase, explanation_id: int, client: ChatModel,
                      methods: Sequence[str] = METHODS, seed: int = 0, n_activating: int | None = 20,
                      n_non_activating: int | None = 20, n_simulation: tuple[int, int] = (6, 4)) -> dict[str, Score]:
    """Score a stored explanation with each method and store the scores; returns them by method.

    Detection uses up to `n_activating` + `n_non_activating` held-out excerpts, fuzzing the
    activating ones, simulation `n_simulation = (activating, non-activating)` excerpts.

    Example:
        >>> from mechscope.features.export import from_neuronpedia
        >>> acts = [{"tokens": ["in", " 1984"], "values": [0, 3.0], "bin_contains": 3.0, "mechscope_token_index": 1},
        ...         {"tokens": ["by", " 1990"], "values": [0, 2.0], "bin_contains": 2.0, "mechscope_kind": "interval",
        ...          "mechscope_interval": 0, "mechscope_token_index": 5},
        ...         {"tokens": ["a", " cat"], "values": [0, 0], "mechscope_kind": "random", "mechscope_token_index": 8}]
        >>> db = from_neuronpedia({"features": [{"feature_index": 0, "activations": acts}]}, "features.db")
        >>> class Scripted:                                # a stand-in for a real language model
        ...     name = "scripted"
        ...     def chat(self, messages, max_tokens=256):
        ...         return "years" if "Describe" in messages[-1]["content"] else "1: yes\\n2: no\\n0: 0\\n1: 9"
        >>> eid = db.add_explanation(0, "years", "by hand")
        >>> scores = score_explanation(db, eid, Scripted(), methods=["detection", "simulation"])
        >>> scores["detection"].value, [s["method"] for s in db.con.execute("SELECT method FROM scores")]
        (1.0, ['detection', 'simulation'])
    """
    row = db.con.execute("SELECT latent, text FROM explanations WHERE id = ?", (explanation_id,)).fetchone()
    if row is None:
        raise FeatureDatabaseError(f"no explanation with id {explanation_id} in {db.path}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        from mechscope.core.errors import unknown_name_message

        raise FeatureDatabaseError(unknown_name_message("scoring method", unknown[0], METHODS))
    latent, text = int(row[0]), str(row[1])
    full = held_out(db, latent)
    data = full.subset(n_activating, n_non_activating)
    out: dict[str, Score] = {}
    for method in methods:
        if method == "detection":
            score = score_detection(client, text, data, seed=seed)
        elif method == "fuzzing":
            score = score_fuzzing(client, text, data, seed=seed)
        else:
            score = score_simulation(client, text, full.subset(*n_simulation))
        db.add_score(explanation_id, method, score.value, client.name, score.n,
                     {"prompt_version": PROMPT_VERSION, "seed": seed, **score.detail})
        out[method] = score
    return out
