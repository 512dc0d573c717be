"""Autointerp: prompts pinned byte for byte, scorer formulas on hand-computed cases, and end to end
against a real OpenAI-compatible HTTP server on 127.0.0.1 whose rule-based "model" knows a planted
latent that fires exactly on digits."""

from __future__ import annotations

import json
import random
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from mechscope.apps.cli import main
from mechscope.dictionaries import make_dictionary
from mechscope.features import CollectConfig, FeatureDatabase
from mechscope.features.accumulate import Accumulator
from mechscope.features.autointerp import (
    balanced_accuracy,
    explain_latent,
    held_out,
    make_client,
    pooled_pearson,
    score_explanation,
)
from mechscope.features.autointerp.client import LanguageModelError
from mechscope.features.autointerp.prompts import (
    detection_messages,
    explain_messages,
    fuzzing_messages,
    simulation_messages,
)
from mechscope.features.autointerp.score import parse_activations, parse_yes_no
from mechscope.features.write import write_results
from tiny_lm import tiny_lm

# -- prompts, byte for byte -------------------------------------------------------------------------

EXPLAIN_GOLDEN = (
    "We are studying one latent (feature) of a neural network. Below are text excerpts where it activates. "
    "In each excerpt the tokens on which it activates are marked <<like this>>; the number in brackets is the "
    "excerpt's largest activation.\n\n"
    "1. [2.50] in<< 1984>>\\n\n"
    "2. [1.00] <<7>> days\n\n"
    "Describe in one short phrase what the latent detects. Answer with the phrase only."
)
DETECTION_GOLDEN = (
    'A latent of a neural network is described as: "years"\n\n'
    "Below are numbered text excerpts. For each one, decide from the description whether the latent "
    "activates anywhere in it.\n\n1. in 1984\n2. a cat\n\n"
    'Answer with one line per excerpt, in order, of the form "N: yes" or "N: no".'
)
FUZZING_GOLDEN = (
    'A latent of a neural network is described as: "years"\n\n'
    "In each numbered excerpt below some tokens are marked <<like this>>. For each one, decide from the "
    "description whether the marked tokens are the tokens on which the latent activates.\n\n"
    "1. <<in>> 1984\n\n"
    'Answer with one line per excerpt, in order, of the form "N: yes" or "N: no".'
)
SIMULATION_GOLDEN = (
    'A latent of a neural network is described as: "years"\n\n'
    "Below are the tokens of a text excerpt, one per line, each after its number and a tab. Predict the "
    "latent's activation on every token as an integer from 0 (none) to 10 (strongest).\n\n"
    "0\tin\n1\t 1984\n\n"
    'Answer with one line per token, in order, of the form "N: activation".'
)
SYSTEM = "You are a careful interpretability researcher. Follow the answer format exactly."


def test_prompts_are_pinned() -> None:
    ex = explain_messages([(["in", " 1984", "\n"], [0.0, 2.5, 0.0]), (["7", " days"], [1.0, 0.0])])
    assert ex == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": EXPLAIN_GOLDEN}]
    assert detection_messages("years", [["in", " 1984"], ["a", " cat"]])[1]["content"] == DETECTION_GOLDEN
    assert fuzzing_messages("years", [(["in", " 1984"], [1.0, 0.0])])[1]["content"] == FUZZING_GOLDEN
    assert simulation_messages("years", ["in", " 1984"])[1]["content"] == SIMULATION_GOLDEN


# -- formulas on hand-computed cases ------------------------------------------------------------------

def test_balanced_accuracy_by_hand() -> None:
    # 3 positives (2 found), 1 negative (rejected): (2/3 + 1/1) / 2
    assert balanced_accuracy([True, True, True, False], [True, True, False, False]) == pytest.approx(5 / 6)
    assert balanced_accuracy([True, False], [True, True]) == 0.5  # says yes to everything: chance
    assert balanced_accuracy([True, False, False], [False, True, True]) == 0.0


def test_pooled_pearson_by_hand() -> None:
    # pooled x = [0, 10, 0, 5], y = [0, 2, 1, 1]: means 3.75 and 1; sxy = 10, sxx = 68.75, syy = 2
    assert pooled_pearson([[0, 10], [0, 5]], [[0, 2], [1, 1]]) == pytest.approx(10 / (68.75 * 2) ** 0.5)
    assert pooled_pearson([[1, 1]], [[0, 3]]) is None  # constant prediction: undefined
    # pooling differs from averaging per excerpt: each excerpt alone is perfectly correlated
    assert pooled_pearson([[0, 1], [5, 6]], [[0, 1], [0, 1]]) == pytest.approx(1 / 26**0.5)  # sxy 1, sxx 26, syy 1


def test_answer_parsing() -> None:
    assert parse_yes_no("1: yes\n2: No\n4: yes\nnoise", 3) == [True, False, False]
    assert parse_activations("0: 10\n1: 3.5\n2: 42\nbad", 4) == [10.0, 3.5, 10.0, 0.0]


# -- end to end against a scripted OpenAI-compatible server ---------------------------------------------

RULES = {"digit": str.isdigit, "vowel": lambda c: c in "aeiouAEIOU"}


def _rule(explanation: str):
    for word, rule in RULES.items():
        if word in explanation.lower():
            return rule
    return lambda c: False


def _segments(line: str) -> list[tuple[str, bool]]:
    """(token text, marked) pieces of a rendered excerpt."""
    parts, pos = [], 0
    for m in re.finditer(r"<<(.*?)>>", line):
        parts += [(c, False) for c in line[pos:m.start()]]
        parts.append((m.group(1), True))
        pos = m.end()
    return parts + [(c, False) for c in line[pos:]]


def rule_based_reply(prompt: str) -> str:
    """A stand-in language model that applies the rule its explanation names, character by character."""
    if "Describe in one short phrase" in prompt:
        marked = re.findall(r"<<(.*?)>>", prompt.split("\n\n")[1])
        return "Explanation: digits." if marked and all(m.isdigit() for m in marked) else "something else"
    rule = _rule(re.search(r'described as: "(.*)"', prompt).group(1))
    body = prompt.split("\n\n")[2]
    if "marked <<like this>>" in prompt:
        answers = []
        for line in body.splitlines():
            n, text = line.split(". ", 1)
            segs = _segments(text)
            right = all(rule(t) == marked for t, marked in segs) and any(m for _, m in segs)
            answers.append(f"{n}: {'yes' if right else 'no'}")
        return "\n".join(answers)
    if "one per line" in prompt:
        return "\n".join(f"{line.split(chr(9))[0]}: {10 if rule(line.split(chr(9), 1)[1]) else 0}"
                         for line in body.splitlines())
    return "\n".join(f"{line.split('. ', 1)[0]}: {'yes' if any(rule(c) for c in line.split('. ', 1)[1]) else 'no'}"
                     for line in body.splitlines())


class _Handler(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/chat/completions"
        _Handler.requests.append({"body": body, "auth": self.headers.get("Authorization")})
        reply = rule_based_reply(body["messages"][-1]["content"])
        data = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                        "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


class CharTokenizer:
    """One token per printable ASCII character (id = ord - 32)."""

    bos_token_id = eos_token_id = pad_token_id = None

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(32 + i) for i in ids)


@pytest.fixture(scope="module")
def planted_db(tmp_path_factory: pytest.TempPathFactory):
    """A feature database whose latent 0 fires (2.0) exactly on digit characters, latent 1 on vowels."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    T, n_ctx = 48, 40
    text = ""
    while len(text) < T * n_ctx:
        text += rng.choice(words) + " " + (str(rng.randint(0, 9999)) + " " if rng.random() < 0.25 else "")
    ids = torch.tensor([ord(c) - 32 for c in text[: T * n_ctx]]).view(n_ctx, T)
    chars = [[text[c * T + p] for p in range(T)] for c in range(n_ctx)]
    acts = torch.zeros(n_ctx, T, 4)
    for c in range(n_ctx):
        for p, ch in enumerate(chars[c]):
            acts[c, p, 0] = 2.0 if ch.isdigit() else 0.0
            acts[c, p, 1] = 1.0 + p / T if ch in "aeiou" else 0.0
    cfg = CollectConfig(top_k=10, n_intervals=5, per_interval=4, n_random=10, random_pool=64, window_left=8,
                        window_right=4)
    acc = Accumulator(4, cfg, T)
    acc.update(ids, acts, first_context=0)
    model = tiny_lm("llama")
    model.tokenizer = CharTokenizer()
    path = tmp_path_factory.mktemp("autointerp") / "planted.db"
    db = FeatureDatabase.create(path)
    db.set_meta({"d_sae": 4})
    write_results(db, acc, make_dictionary("relu", d_in=64, d_sae=4, seed=0, hook_name="blocks.1.hook_resid_post"),
                  model, {"model": "planted", "hook_name": "blocks.1.hook_resid_post"})
    db.close()
    return path


def test_end_to_end_true_explanation_scores_high_wrong_one_at_chance(server, planted_db) -> None:
    client = make_client("openai:rule-model", base_url=server, api_key="sk-test")
    with FeatureDatabase.open(planted_db) as db:
        data = held_out(db, 0)
        assert len(data.activating) >= 8 and len(data.non_activating) >= 8
        eid = explain_latent(db, 0, client)
        assert db.explanations(0)[0]["text"] == "digits"
        assert db.explanations(0)[0]["explainer"] == "openai:rule-model"
        right = score_explanation(db, eid, client)
        wrong_id = db.add_explanation(0, "vowels", "test")
        wrong = score_explanation(db, wrong_id, client)
        stored = {e["id"]: e["scores"] for e in db.explanations(0)}
    assert right["detection"].value == 1.0 and right["fuzzing"].value == 1.0
    assert right["simulation"].value == pytest.approx(1.0)
    assert wrong["detection"].value == pytest.approx(0.5, abs=0.15)
    assert wrong["fuzzing"].value == pytest.approx(0.5, abs=0.15)
    assert wrong["simulation"].value < 0.2  # vowels and digits never share a token: no positive correlation
    assert stored[eid] == {m: s.value for m, s in right.items()}
    assert _Handler.requests[0]["auth"] == "Bearer sk-test"
    assert all(r["body"]["temperature"] == 0 for r in _Handler.requests)


def test_cli_explain_and_score_through_the_environment(server, planted_db, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MECHSCOPE_LLM_BASE_URL", server)
    monkeypatch.setenv("MECHSCOPE_LLM_MODEL", "rule-model")
    assert main(["explain", str(planted_db), "--latents", "0,1", "--llm", "openai"]) == 0
    assert "digits" in capsys.readouterr().out
    out = tmp_path / "scores.json"
    assert main(["score", str(planted_db), "--latents", "0", "--llm", "openai", "--methods", "detection",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["latents"][0]["detection"] == 1.0 and result["scorer"] == "openai:rule-model"
    assert main(["score", str(planted_db), "--latents", "0", "--llm", "openai", "--methods", "detecton"]) == 2
    assert "detection" in capsys.readouterr().err


def test_unreachable_endpoint_is_a_clear_error(planted_db) -> None:
    client = make_client("openai:m", base_url="http://127.0.0.1:9/v1")
    with FeatureDatabase.open(planted_db) as db, pytest.raises(LanguageModelError, match="cannot reach"):
        explain_latent(db, 0, client)
