"""Tests of mechscope.methods.probes and probe_data on synthetic activations with planted structure."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _tokenizers import WhitespaceTokenizer, real_tokenizer
from mechscope.core.errors import BadInputError
from mechscope.methods.probe_data import load_probe_dataset, read_word_type, resolve_read_position
from mechscope.methods.probe_models import difference_of_means, fit_logistic, fit_ridge, r2_score
from mechscope.methods.probe_plots import plot_probe_report
from mechscope.methods.probes import control_labels, encode_labels, fit_probes_by_layer, held_out_split


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_planted_direction_is_found() -> None:
    g = _gen(0)
    n, d = 600, 32
    labels = torch.randint(0, 2, (n,), generator=g)
    direction = torch.randn(d, generator=g)
    noise = torch.randn(n, d, generator=g) * 1.5  # Bayes accuracy Phi(||direction|| / 1.5) > 0.999
    signal = noise + (2 * labels[:, None] - 1) * direction  # planted at layer 1 only
    report = fit_probes_by_layer({0: noise, 1: signal}, labels)
    assert report.layers[1].score >= 0.98
    assert abs(report.layers[0].score - 0.5) < 0.1
    assert report.best_layer() == 1
    # the difference of means points along the planted direction
    cos = torch.nn.functional.cosine_similarity(report.directions[1].direction, direction.double(), dim=0)
    assert cos > 0.9
    assert report.layers[1].mean_difference_accuracy >= 0.95


def test_random_labels_stay_at_chance() -> None:
    # 3 balanced classes, no signal: held-out accuracy within 0.1 of chance (1/3); 400 held-out
    # examples give a standard error of sqrt(1/3 * 2/3 / 400) = 0.024, so 0.1 is about 4 sigma
    g = _gen(1)
    n, d = 2000, 16
    X = torch.randn(n, d, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    report = fit_probes_by_layer({0: X}, labels)
    assert abs(report.layers[0].score - 1 / 3) < 0.1
    assert report.layers[0].chance < 0.4


def test_ridge_recovers_planted_scalar() -> None:
    g = _gen(2)
    n, d = 500, 20
    X = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    y = X @ w + 0.1 * torch.randn(n, generator=g)
    report = fit_probes_by_layer({3: X}, y)
    assert report.task == "regression"
    assert report.layers[3].score > 0.95
    data = report.to_dict()
    assert data["metric"] == "r2" and data["layers"][3]["r2"] == report.layers[3].score
    # closed form agrees with a direct least-squares solve when alpha = 0
    probe = fit_ridge(X, y, alpha=0.0)
    A = torch.cat([X.double(), torch.ones(n, 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(A, y.double()[:, None]).solution[:, 0]
    torch.testing.assert_close(probe.predict(X), A @ coef)


def test_r2_hand_value() -> None:
    # y = [1, 2, 4]: mean 7/3, SS_tot = 42/9, SS_res = 1, R^2 = 1 - 9/42
    assert r2_score(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 4.0])) == pytest.approx(1 - 9 / 42)


def test_logistic_matches_closed_form() -> None:
    # one binary feature, two groups: the unpenalised MLE fits each group's empirical rate,
    # p(y=1 | x=0) = 1/4 and p(y=1 | x=1) = 2/3
    X = torch.tensor([[0.0]] * 4 + [[1.0]] * 6)
    y = torch.tensor([1, 0, 0, 0, 1, 1, 1, 1, 0, 0])
    probe = fit_logistic(X, y, l2=0.0)
    p = probe.logits(torch.tensor([[0.0], [1.0]])).softmax(-1)[:, 1]
    torch.testing.assert_close(p, torch.tensor([0.25, 2 / 3], dtype=torch.float64), atol=1e-5, rtol=0)


def test_logistic_penalised_stationarity() -> None:
    # with l2 > 0, the optimum satisfies Z^T (P - Y) / n + l2 W^T = 0 and sum_n (P - Y) = 0
    g = _gen(3)
    X = torch.randn(60, 4, generator=g)
    y = torch.randint(0, 3, (60,), generator=g)
    l2 = 0.1
    probe = fit_logistic(X, y, l2=l2)
    Z = (X.double() - probe.mean) / probe.std
    P = probe.logits(X).softmax(-1)
    Y = torch.nn.functional.one_hot(y, 3).double()
    grad_W = (P - Y).T @ Z / len(X) + l2 * probe.weight
    torch.testing.assert_close(grad_W, torch.zeros_like(grad_W), atol=1e-6, rtol=0)
    torch.testing.assert_close((P - Y).sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)


def test_control_labels_consistent_per_type() -> None:
    types = [f"w{i % 50}" for i in range(1000)]
    labels = torch.tensor([i % 4 for i in range(1000)])
    ctrl = control_labels(types, labels, seed=5)
    for t in set(types):
        idx = [i for i, s in enumerate(types) if s == t]
        assert len(set(ctrl[idx].tolist())) == 1
    assert set(ctrl.tolist()) <= set(labels.tolist())
    assert len(set(ctrl.tolist())) > 1
    assert torch.equal(ctrl, control_labels(types, labels, seed=5))
    assert not torch.equal(ctrl, control_labels(types, labels, seed=6))


def _word_type_data(encode_identity: bool, seed: int = 4) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Label = a fixed function of the word type, flipped with probability 0.05.

    With ``encode_identity`` the activations are a random embedding per type plus noise (a probe
    can memorise types); otherwise they hold only the label direction plus noise.
    """
    g = _gen(seed)
    n_types, n, d = 40, 1200, 64
    type_ids = torch.randint(0, n_types, (n,), generator=g)
    type_label = torch.randint(0, 2, (n_types,), generator=g)
    flip = torch.rand(n, generator=g) < 0.05
    labels = torch.where(flip, 1 - type_label[type_ids], type_label[type_ids])
    if encode_identity:
        X = 3.0 * torch.randn(n_types, d, generator=g)[type_ids] + torch.randn(n, d, generator=g)
    else:
        X = 2.0 * (2 * type_label[type_ids, None] - 1) * torch.randn(d, generator=g) + torch.randn(
            n, d, generator=g
        )
    return X, labels, [f"word{t}" for t in type_ids.tolist()]


def test_control_task_selectivity() -> None:
    X_id, y_id, types_id = _word_type_data(encode_identity=True)
    X_lab, y_lab, types_lab = _word_type_data(encode_identity=False)
    memorised = fit_probes_by_layer({0: X_id}, y_id, types_id).layers[0]
    linear = fit_probes_by_layer({0: X_lab}, y_lab, types_lab).layers[0]
    # evaluated on held-out words: memorising word identity fits the training words only
    assert memorised.train_score > 0.85 and memorised.score < 0.7
    assert memorised.selectivity < 0.15
    # the label direction generalises to unseen words; their control labels cannot be read
    assert linear.score > 0.85
    assert linear.control_score < 0.75
    assert linear.selectivity > 0.2
    assert linear.selectivity == pytest.approx(linear.score - linear.control_score)


def test_held_out_words_never_meet_training_words() -> None:
    X, y, types = _word_type_data(encode_identity=False)
    report = fit_probes_by_layer({0: X}, y, types, held_out_fraction=0.25, seed=3)
    held = set(report.settings["held_out_words"])
    train, test = held_out_split(len(types), 0.25, 3, groups=types, strata=y.tolist())
    assert {types[i] for i in test.tolist()} == held
    assert held.isdisjoint(types[i] for i in train.tolist())
    assert len(train) + len(test) == len(types) and report.n_held_out == len(test)
    assert set(y[test].tolist()) == {0, 1}  # drawn per class: both classes are held out
    assert report.settings["split"] == "held-out words" and 0.15 < len(test) / len(types) < 0.4
    with pytest.raises(BadInputError, match=r"Every example is read at the same word \('the'\)"):
        held_out_split(4, 0.5, groups=["the"] * 4)
    one_word_per_class = held_out_split(6, 0.3, groups=["a", "a", "a", "b", "b", "b"], strata=[0, 0, 0, 1, 1, 1])
    assert len(one_word_per_class[1]) == 3 and len(one_word_per_class[0]) == 3


def test_report_json_and_plot(tmp_path) -> None:
    X, y, types = _word_type_data(encode_identity=False)
    labels = ["pos" if v else "neg" for v in y.tolist()]
    report = fit_probes_by_layer({0: X, 1: torch.randn_like(X)}, labels, types, seed=7)
    data = json.loads(report.to_json())
    assert data["classes"] == ["neg", "pos"] and data["contrast"] == ["pos", "neg"]
    row = data["layers"]["0"]
    assert {"accuracy", "control_accuracy", "selectivity"} <= set(row)
    assert row["selectivity"] == pytest.approx(row["accuracy"] - row["control_accuracy"])
    assert data["n_train"] + data["n_held_out"] == len(labels)
    assert data["provenance"]["seed"] == 7
    fig = plot_probe_report(report, tmp_path / "probes.png")
    assert len(fig.axes[0].lines) >= 2
    assert (tmp_path / "probes.png").stat().st_size > 1000


def test_split_and_labels() -> None:
    train, test = held_out_split(100, 0.25, seed=3)
    assert len(test) == 25 and not set(train.tolist()) & set(test.tolist())
    assert torch.equal(test, held_out_split(100, 0.25, seed=3)[1])
    assert not torch.equal(test, held_out_split(100, 0.25, seed=4)[1])
    idx, classes = encode_labels([True, False, True])
    assert idx.tolist() == [1, 0, 1] and classes == [False, True]


def test_difference_of_means_hand_value() -> None:
    X = torch.tensor([[1.0, 2.0], [3.0, 2.0], [0.0, 0.0], [0.0, 2.0]])
    md = difference_of_means(X, torch.tensor([1, 1, 0, 0]), 1, 0)
    torch.testing.assert_close(md.direction, torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(md.unit, torch.tensor([2.0, 1.0]) / math.sqrt(5))
    torch.testing.assert_close(md.midpoint, torch.tensor([1.0, 1.5]))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="expected activations"):
        fit_probes_by_layer({0: torch.randn(10, 3)}, [0, 1] * 4)
    with pytest.raises(ValueError, match="NaN"):
        fit_probes_by_layer({0: torch.full((4, 2), float("nan"))}, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="2 classes"):
        fit_probes_by_layer({0: torch.randn(4, 2)}, [1, 1, 1, 1])
    with pytest.raises(ValueError, match="word types"):
        fit_probes_by_layer({0: torch.randn(4, 2)}, [0, 1, 0, 1], ["a"])
    with pytest.raises(ValueError, match="contrast"):
        fit_probes_by_layer({0: torch.randn(4, 2)}, [0, 1, 0, 1], contrast=(0, 5))


def test_probe_dataset_loader(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    rows = [
        {"text": "the cat sat", "label": "animal", "token": "cat"},
        {"text": "a red car", "label": "thing"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = load_probe_dataset(path)
    assert ds.texts == ["the cat sat", "a red car"] and ds.labels == ["animal", "thing"]
    assert ds.tokens == ["cat", None]
    tok = WhitespaceTokenizer()
    # whitespace stub adds BOS at index 0
    assert ds.read_positions(tok) == [2, 3]
    assert ds.read_positions(tok, add_special_tokens=False) == [1, 2]
    assert ds.word_types(tok) == ["cat", "car"]
    path.write_text(json.dumps({"text": "x", "label": 1, "token": "y"}))
    with pytest.raises(ValueError, match="does not occur"):
        load_probe_dataset(path)
    path.write_text(json.dumps({"text": "x"}))
    with pytest.raises(ValueError, match="missing"):
        load_probe_dataset(path)


def test_resolve_read_position_stub() -> None:
    tok = WhitespaceTokenizer()
    text = "go to the shop and the park"
    assert resolve_read_position(tok, text, "the") == 6  # last occurrence, after BOS
    assert resolve_read_position(tok, text, "the", occurrence=0) == 3
    assert resolve_read_position(tok, text) == 7
    assert resolve_read_position(tok, text, "sho") == 4  # partial word: the token covering it
    with pytest.raises(ValueError, match="occurs 2 times"):
        resolve_read_position(tok, text, "the", occurrence=2)
    with pytest.raises(ValueError, match="does not occur"):
        resolve_read_position(tok, text, "zebra")
    assert read_word_type(tok, text) == "park"


def test_resolve_read_position_real_tokenizer() -> None:
    tok = real_tokenizer()
    text = "The Eiffel Tower is in the city of Paris"
    pos = resolve_read_position(tok, text, " Tower")
    ids = tok(text)["input_ids"]
    assert tok.decode(ids[pos]).strip() == "Tower"
    last = resolve_read_position(tok, text)
    assert last == len(ids) - 1  # the tokenizer appends no special token
    assert tok.decode(ids[last]).strip() == "Paris"
    # a multi-token word is read at its last token
    word = "antidisestablishmentarianism"
    pos = resolve_read_position(tok, f"I said {word} twice", word)
    ids = tok(f"I said {word} twice")["input_ids"]
    assert tok.decode(ids[pos + 1]).strip() == "twice"
    assert word.endswith(tok.decode(ids[pos]).strip())
