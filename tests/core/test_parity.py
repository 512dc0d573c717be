"""Hooked runs equal plain Hugging Face runs, family by family (see mechscope.core.verify)."""

from __future__ import annotations

import pytest
import torch

from mechscope.core.verify import run_checks
from tiny_models import CONFIGS, tiny_ids, tiny_model


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_every_parity_check_passes_on_tiny_models(kind: str) -> None:
    checks = run_checks(tiny_model(kind), tiny_ids(batch=2, pos=12))
    failed = [c for c in checks if not c.passed]
    assert not failed, f"{kind}: {failed}"
    assert len(checks) >= 11


@pytest.mark.slow
def test_default_model_parity_and_prediction(default_model) -> None:
    model = default_model
    prompt = "The Eiffel Tower is in the city of"
    with torch.no_grad():
        logits = model(prompt)
    assert model.to_str_tokens(logits[0, -1].argmax(-1, keepdim=True)) == [" Paris"]
    checks = run_checks(model, model.to_tokens([prompt]),
                        padded_texts=["Hello there, how are you doing today?", "Hi", prompt])
    failed = [c for c in checks if not c.passed]
    assert not failed, failed


@pytest.mark.slow
def test_gemma3_parity_and_prediction() -> None:
    import mechscope

    model = mechscope.load_model("gemma3-270m")
    assert model.cfg.family == "gemma3"
    prompt = "The Eiffel Tower is in the city of"
    with torch.no_grad():
        logits = model(prompt)
    assert model.to_str_tokens(logits[0, -1].argmax(-1, keepdim=True)) == [" Paris"]
    checks = run_checks(model, model.to_tokens([prompt]), padded_texts=["Hello there, how are you?", "Hi"])
    failed = [c for c in checks if not c.passed]
    assert not failed, failed
