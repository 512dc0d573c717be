"""Prompt-pair tasks for circuit discovery: JSONL files and the built-in IOI and greater-than tasks.

JSONL format (one pair per line; clean and corrupt must have the same number of tokens):

    {"clean": "When Mary and John went to the store, John gave a drink to",
     "corrupt": "When Mary and John went to the store, Anna gave a drink to",
     "answer": " Mary", "wrong": " John"}

`answer`/`wrong` are single tokens; the metric is the logit difference
`logit[answer] - logit[wrong]` at the last token. Instead, `answers` and `wrongs` (lists of
single tokens) give the probability difference `sum p(answers) - sum p(wrongs)` (as in the
greater-than task). Blank lines are skipped.

Example:
    >>> pairs = ioi_pairs(model, n=20, seed=0)            # doctest: +SKIP
    >>> pairs.metric(model(pairs.clean)).mean()            # doctest: +SKIP
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechscope.core.errors import MechscopeError, unknown_name_message
from mechscope.core.files import iter_jsonl

TASKS = ("ioi", "greater-than")


@dataclass
class Pairs:
    """Token-aligned clean/corrupt prompts and what the metric reads at each pair's last token.

    `good`/`bad` are [n, k] token ids (-1 pads a row); `kind` is "logit_diff" (first good
    minus first bad logit) or "prob_diff" (sum of good minus sum of bad probabilities).

    Example:
        >>> pairs = Pairs(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 4, 3]]), None, torch.tensor([2]),
        ...               good=torch.tensor([[5]]), bad=torch.tensor([[6]]))
        >>> logits = torch.zeros(1, 3, 8)
        >>> logits[0, 2, 5] = 2.0
        >>> pairs.metric(logits)                                        # logit[5] - logit[6] at position 2
        tensor([2.])
    """

    clean: Tensor
    corrupt: Tensor
    attention_mask: Tensor | None
    pos: Tensor
    good: Tensor
    bad: Tensor
    kind: str = "logit_diff"
    texts: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.clean.shape[0]

    def rows(self, rows: slice) -> Pairs:
        mask = None if self.attention_mask is None else self.attention_mask[rows]
        return Pairs(self.clean[rows], self.corrupt[rows], mask, self.pos[rows], self.good[rows], self.bad[rows],
                     self.kind, self.texts[rows])

    def metric(self, logits: Tensor) -> Tensor:
        """One value per pair [n] from logits [n, pos, d_vocab] (see the class docstring)."""
        last = self.last_logits(logits)
        last = last.to(torch.promote_types(last.dtype, torch.float32))
        good, bad = self.good.to(last.device), self.bad.to(last.device)
        if self.kind == "logit_diff":
            return last.gather(1, good[:, :1]).squeeze(1) - last.gather(1, bad[:, :1]).squeeze(1)
        probs = last.softmax(-1)
        return _masked_sum(probs, good) - _masked_sum(probs, bad)

    def last_logits(self, logits: Tensor) -> Tensor:
        """Logits [n, d_vocab] at each pair's metric position."""
        return logits[torch.arange(logits.shape[0], device=logits.device), self.pos.to(logits.device)]


def _masked_sum(probs: Tensor, ids: Tensor) -> Tensor:
    keep = ids >= 0
    return (probs.gather(1, ids.clamp(min=0)) * keep).sum(1)


def _ids(model: Any, rows: list[list[str]]) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[model.to_single_token(t) for t in r] + [-1] * (width - len(r)) for r in rows])


def make_pairs(model: Any, records: list[dict[str, Any]]) -> Pairs:
    """Tokenize records with `clean`, `corrupt` and `answer`/`wrong` (or `answers`/`wrongs`).

    Example:
        >>> from mechscope import load_model
        >>> pairs = make_pairs(load_model(), [{"clean": "The Eiffel Tower is in", "corrupt": "The Colosseum is in",   # doctest: +SKIP
        ...                                    "answer": " Paris", "wrong": " Rome"}])
    """
    if not records:
        raise MechscopeError("No prompt pairs given.")
    sets = "answers" in records[0]
    for i, rec in enumerate(records):
        need = ("clean", "corrupt", "answers", "wrongs") if sets else ("clean", "corrupt", "answer", "wrong")
        missing = [k for k in need if k not in rec]
        if missing:
            raise MechscopeError(f"Pair {i}: missing {', '.join(missing)} (see the JSONL format in the docs).")
    clean = model.tokenize([r["clean"] for r in records])
    corrupt = model.tokenize([r["corrupt"] for r in records])
    lengths, corrupt_lengths = clean.attention_mask.sum(1), corrupt.attention_mask.sum(1)
    for i in range(len(records)):
        if lengths[i] != corrupt_lengths[i]:
            raise MechscopeError(f"Pair {i}: clean has {int(lengths[i])} tokens, corrupt {int(corrupt_lengths[i])}; "
                                 "they must have the same number of tokens.")
    width = clean.ids.shape[1]
    corrupt_ids = torch.nn.functional.pad(corrupt.ids, (0, width - corrupt.ids.shape[1]))
    corrupt_ids = torch.where(clean.attention_mask.bool(), corrupt_ids, clean.ids)
    good = _ids(model, [r["answers"] if sets else [r["answer"]] for r in records])
    bad = _ids(model, [r["wrongs"] if sets else [r["wrong"]] for r in records])
    mask = clean.attention_mask if bool(clean.attention_mask.eq(0).any()) else None
    return Pairs(clean.ids, corrupt_ids, mask, lengths - 1, good, bad, "prob_diff" if sets else "logit_diff",
                 list(records))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a prompt-pair JSONL file (format in the module docstring).

    Example:
        >>> _ = Path("pairs.jsonl").write_text('{"clean": "A", "corrupt": "B", "answer": " x", "wrong": " y"}\\n')
        >>> read_jsonl("pairs.jsonl")[0]["answer"]
        ' x'
    """
    path = Path(path)
    if not path.is_file():
        raise MechscopeError(f"No such prompt-pair file: {path}")
    records = []
    for lineno, value in iter_jsonl(path):
        if not isinstance(value, dict):
            raise MechscopeError(f"{path}:{lineno}: each line is one JSON object (a prompt pair).")
        records.append(value)
    return records


# -- built-in tasks --------------------------------------------------------------------------------
NAMES = ["Mary", "John", "Tom", "James", "Anna", "Paul", "Sarah", "David", "Kate", "Mark", "Lisa", "Peter",
         "Emma", "Jack", "Laura", "Daniel", "Alice", "Bob", "Susan", "Michael"]
PLACES = ["store", "park", "school", "beach", "office", "market", "station", "garden"]
OBJECTS = ["drink", "book", "ball", "gift", "letter", "key", "bag", "ring"]
TEMPLATES = [
    "When {A} and {B} went to the {P}, {B} gave a {O} to",
    "When {A} and {B} got to the {P}, {B} handed a {O} to",
    "After {A} and {B} arrived at the {P}, {B} gave a {O} to",
    "Then, {A} and {B} went to the {P}. {B} gave a {O} to",
    "While {A} and {B} were at the {P}, {B} passed a {O} to",
    "Friends {A} and {B} walked to the {P}. {B} threw a {O} to",
]


def ioi_records(model: Any, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """IOI pairs: clean names the indirect object A; corrupt replaces the repeated subject B by a third name C.

    Example:
        >>> from mechscope import load_model
        >>> ioi_records(load_model(), n=1, seed=0)[0]["clean"]                  # doctest: +SKIP
    """
    rng = random.Random(seed)
    names = [x for x in NAMES if len(model.to_str_tokens(" " + x)) == len(model.to_str_tokens(" Mary"))]
    names = [x for x in names if _single(model, " " + x)]
    out = []
    while len(out) < n:
        a, b, c = rng.sample(names, 3)
        template = rng.choice(TEMPLATES)
        fill = dict(P=rng.choice(PLACES), O=rng.choice(OBJECTS))
        clean = template.format(A=a, B=b, **fill)
        corrupt = template.replace("{B} gave", "{C} gave").replace("{B} handed", "{C} handed") \
            .replace("{B} passed", "{C} passed").replace("{B} threw", "{C} threw").format(A=a, B=b, C=c, **fill)
        out.append({"clean": clean, "corrupt": corrupt, "answer": " " + a, "wrong": " " + b})
    return out


def _single(model: Any, text: str) -> bool:
    try:
        model.to_single_token(text)
    except MechscopeError:
        return False
    return True


NOUNS = ["war", "deal", "contract", "strike", "trial", "journey", "reign", "project"]


def greater_than_records(model: Any, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Greater-than pairs: "The war lasted from the year 17YY to the year 17" -> a year above YY.

    Years are written so the model's tokenizer splits them the same way in every prompt;
    the corrupt prompt starts the range at 17 01 (no year is below it). The answer sets
    are the tokens that continue the year: above YY (good) or at most YY (bad).

    Example:
        >>> from mechscope import load_model
        >>> greater_than_records(load_model(), n=1, seed=0)[0]["clean"]         # doctest: +SKIP
    """
    rng = random.Random(seed)
    digits_single = _single(model, "5") and not _single(model, "32")
    out = []
    while len(out) < n:
        century, yy = rng.choice([11, 12, 13, 14, 15, 16, 17, 18]), rng.randint(2, 98)
        noun = rng.choice(NOUNS)
        stem = f"The {noun} lasted from the year {century}{{YY:02d}} to the year {century}"
        clean, corrupt = stem.format(YY=yy), stem.format(YY=1)
        if digits_single:  # the next token is the tens digit: compare it with YY's tens digit
            tens = yy // 10
            good = [str(d) for d in range(tens + 1, 10)]
            bad = [str(d) for d in range(0, tens)]
            if not good or not bad:
                continue
        else:
            good = [f"{y:02d}" for y in range(yy + 1, 100)]
            bad = [f"{y:02d}" for y in range(0, yy + 1)]
        out.append({"clean": clean, "corrupt": corrupt, "answers": good, "wrongs": bad, "yy": yy})
    return out


def task_pairs(model: Any, task: str, n: int = 40, seed: int = 0) -> Pairs:
    """Pairs of a built-in task (`ioi`, `greater-than`) or of a JSONL file.

    Example:
        >>> from mechscope import load_model
        >>> pairs = task_pairs(load_model(), "ioi", n=8)                       # doctest: +SKIP
        >>> len(pairs)                                                         # doctest: +SKIP
        8
    """
    if task == "ioi":
        return make_pairs(model, ioi_records(model, n, seed))
    if task == "greater-than":
        return make_pairs(model, greater_than_records(model, n, seed))
    if task.endswith(".jsonl") or Path(task).exists():
        return make_pairs(model, read_jsonl(task)[:n] if n else read_jsonl(task))
    raise MechscopeError(unknown_name_message("task", task, list(TASKS)) + " Or give a .jsonl file of prompt pairs.")
