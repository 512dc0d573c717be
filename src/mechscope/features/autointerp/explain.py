"""The explainer: show a language model a latent's top examples, store its one-phrase explanation.

The explainer sees only `top` examples; scorers use the `interval` and `random` examples
(held out, see `score.held_out`).

Example:
    >>> explain_latent(db, 12, make_client("local"))   # doctest: +SKIP
    7
"""

from __future__ import annotations

import random
import re

from mechscope.features.autointerp.client import ChatModel
from mechscope.features.autointerp.prompts import PROMPT_VERSION, explain_messages
from mechscope.features.database import FeatureDatabase, FeatureDatabaseError


def clean_explanation(reply: str) -> str:
    """The first non-empty line of a reply, without a leading 'Explanation:' label, quotes or final period.

    Example:
        >>> clean_explanation('Explanation: "digits in years".\\nMore text')
        'digits in years'
    """
    for line in reply.strip().splitlines():
        line = re.sub(r"^\W*(explanation|answer|phrase)\s*:\s*", "", line.strip(), flags=re.I)
        line = line.strip().strip("\"'`*").strip().rstrip(".").strip().strip("\"'`*").strip()
        if line:
            return line
    return ""


def explain_latent(db: FeatureDatabase, latent: int, client: ChatModel, n_examples: int = 10) -> int:
    """Ask `client` to explain `latent` from its top `n_examples`; store and return the explanation id.

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
        >>> eid = explain_latent(db, 0, Scripted())
        >>> db.explanations(0)[0]["text"], db.explanations(0)[0]["id"] == eid
        ('years', True)
    """
    top = db.examples(latent, "top")[:n_examples]
    if not top:
        raise FeatureDatabaseError(f"latent {latent} never fired in {db.path}; there is nothing to explain")
    reply = client.chat(explain_messages([(e["text"], e["acts"]) for e in top]), max_tokens=48)
    text = clean_explanation(reply) or "(no explanation)"
    return db.add_explanation(latent, text, client.name, "examples",
                              detail={"prompt_version": PROMPT_VERSION, "examples": [e["token_index"] for e in top],
                                      "reply": reply})


def select_latents(db: FeatureDatabase, latents: list[int] | None = None, n: int | None = None, seed: int = 0,
                   min_examples: int = 5) -> list[int]:
    """The latents to explain: `latents` as given (checked), else `n` seeded latents with `min_examples` top examples.

    Example:
        >>> from mechscope.features.export import from_neuronpedia
        >>> acts = [{"tokens": ["in", " 1984"], "values": [0, 3.0], "bin_contains": 3.0, "mechscope_token_index": 1},
        ...         {"tokens": ["by", " 1990"], "values": [0, 2.0], "bin_contains": 2.0, "mechscope_kind": "interval",
        ...          "mechscope_interval": 0, "mechscope_token_index": 5},
        ...         {"tokens": ["a", " cat"], "values": [0, 0], "mechscope_kind": "random", "mechscope_token_index": 8}]
        >>> db = from_neuronpedia({"features": [{"feature_index": 0, "activations": acts}]}, "features.db")
        >>> select_latents(db, [0]), select_latents(db, min_examples=1), select_latents(db, min_examples=2)
        ([0], [0], [])
    """
    if latents:
        return [db.check_latent(k) for k in latents]
    rows = db.con.execute("SELECT latent FROM examples WHERE kind = 'top' GROUP BY latent HAVING COUNT(*) >= ? "
                          "ORDER BY latent", (min_examples,)).fetchall()
    live = [r[0] for r in rows]
    if n is None or n >= len(live):
        return live
    return sorted(random.Random(seed).sample(live, n))
