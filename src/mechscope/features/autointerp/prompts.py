"""The fixed prompts of autointerp (pinned byte for byte by tests; docs/autointerp.md shows them).

An excerpt is rendered as its tokens joined; with highlighting, each marked token is wrapped as
`<<token>>`. Newlines inside tokens are shown as `\\n` so one excerpt stays on one line.

Example:
    >>> render(["The", " year", " 1", "9"], [0, 0, 2.0, 1.0], mark=True)
    'The year<< 1>><<9>>'
"""

from __future__ import annotations

from collections.abc import Sequence

PROMPT_VERSION = 1

SYSTEM = "You are a careful interpretability researcher. Follow the answer format exactly."

EXPLAIN = (
    "We are studying one latent (feature) of a neural network. Below are text excerpts where it activates. "
    "In each excerpt the tokens on which it activates are marked <<like this>>; the number in brackets is the "
    "excerpt's largest activation.\n\n"
    "{excerpts}\n\n"
    "Describe in one short phrase what the latent detects. Answer with the phrase only."
)

DETECTION = (
    'A latent of a neural network is described as: "{explanation}"\n\n'
    "Below are numbered text excerpts. For each one, decide from the description whether the latent "
    "activates anywhere in it.\n\n"
    "{excerpts}\n\n"
    'Answer with one line per excerpt, in order, of the form "N: yes" or "N: no".'
)

FUZZING = (
    'A latent of a neural network is described as: "{explanation}"\n\n'
    "In each numbered excerpt below some tokens are marked <<like this>>. For each one, decide from the "
    "description whether the marked tokens are the tokens on which the latent activates.\n\n"
    "{excerpts}\n\n"
    'Answer with one line per excerpt, in order, of the form "N: yes" or "N: no".'
)

SIMULATION = (
    'A latent of a neural network is described as: "{explanation}"\n\n'
    "Below are the tokens of a text excerpt, one per line, each after its number and a tab. Predict the "
    "latent's activation on every token as an integer from 0 (none) to 10 (strongest).\n\n"
    "{tokens}\n\n"
    'Answer with one line per token, in order, of the form "N: activation".'
)


def _show(token: str) -> str:
    return token.replace("\n", "\\n")


def render(tokens: Sequence[str], acts: Sequence[float], mark: bool = False) -> str:
    """One excerpt on one line; with `mark`, tokens of positive activation become `<<token>>`.

    Example:
        >>> render(["a", "\\n", "b"], [0, 1.0, 0]), render(["a", "\\n", "b"], [0, 1.0, 0], mark=True)
        ('a\\\\nb', 'a<<\\\\n>>b')
    """
    return "".join(f"<<{_show(t)}>>" if mark and a > 0 else _show(t) for t, a in zip(tokens, acts, strict=True))


def explain_messages(examples: Sequence[tuple[Sequence[str], Sequence[float]]]) -> list[dict[str, str]]:
    """Chat messages asking for an explanation of highlighted examples `(tokens, acts)`.

    Example:
        >>> messages = explain_messages([(["The", " year", " 1984"], [0, 0, 2.5])])
        >>> [m["role"] for m in messages], messages[1]["content"].splitlines()[2]
        (['system', 'user'], '1. [2.50] The year<< 1984>>')
    """
    lines = [f"{n}. [{max(acts):.2f}] {render(tokens, acts, mark=True)}" for n, (tokens, acts) in
             enumerate(examples, 1)]
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": EXPLAIN.format(excerpts="\n".join(lines))}]


def detection_messages(explanation: str, excerpts: Sequence[Sequence[str]]) -> list[dict[str, str]]:
    """Chat messages asking which plain excerpts (token lists) the latent fires on.

    Example:
        >>> text = detection_messages("years", [["in", " 1984"], ["a", " cat"]])[1]["content"]
        >>> text.splitlines()[0], text.splitlines()[5]
        ('A latent of a neural network is described as: "years"', '2. a cat')
    """
    lines = [f"{n}. {''.join(_show(t) for t in tokens)}" for n, tokens in enumerate(excerpts, 1)]
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": DETECTION.format(explanation=explanation, excerpts="\n".join(lines))}]


def fuzzing_messages(explanation: str, excerpts: Sequence[tuple[Sequence[str], Sequence[float]]]
                     ) -> list[dict[str, str]]:
    """Chat messages asking whether each excerpt's marks (tokens with mark value > 0) are right.

    Example:
        >>> text = fuzzing_messages("years", [(["in", " 1984"], [0, 1]), (["in", " 1984"], [1, 0])])[1]["content"]
        >>> text.splitlines()[4:6]
        ['1. in<< 1984>>', '2. <<in>> 1984']
    """
    lines = [f"{n}. {render(tokens, marks, mark=True)}" for n, (tokens, marks) in enumerate(excerpts, 1)]
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": FUZZING.format(explanation=explanation, excerpts="\n".join(lines))}]


def simulation_messages(explanation: str, tokens: Sequence[str]) -> list[dict[str, str]]:
    """Chat messages asking for a 0-10 activation per token.

    Example:
        >>> text = simulation_messages("years", ["in", " 1984"])[1]["content"]
        >>> text.splitlines()[4:6]
        ['0\\tin', '1\\t 1984']
    """
    lines = [f"{n}\t{_show(t)}" for n, t in enumerate(tokens)]
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": SIMULATION.format(explanation=explanation, tokens="\n".join(lines))}]
