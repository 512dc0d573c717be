"""Parity checks of a `HookedModel` against its plain Hugging Face model.

`run_checks(model, ids)` returns one `Check` per claim, each with the largest absolute
difference seen. The test suite runs these on every family; `mechscope verify` runs them
on any model a user has.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from mechscope.core import names
from mechscope.core.attention import using_implementation
from mechscope.core.families import get_module
from mechscope.core.hooked import HookedModel


@dataclass(frozen=True)
class Check:
    """One parity claim and the largest absolute difference measured for it.

    Example:
        >>> check = Check("logits (bit-exact)", max_abs_diff=0.0, tolerance=0.0)
        >>> check.passed, check.to_dict()["name"]
        (True, 'logits (bit-exact)')
    """

    name: str
    max_abs_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _diff(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def _scale(reference: Tensor) -> float:
    """Tolerances for float reorderings grow with the size of the values compared."""
    return max(1.0, reference.abs().max().item()) if reference.numel() else 1.0


def _hooks_left(model: HookedModel) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules())


@torch.no_grad()
def run_checks(model: HookedModel, ids: Tensor, padded_texts: list[str] | None = None,
               atol: float = 1e-5) -> list[Check]:
    """Compare hooked runs with plain HF runs on token ids [batch, pos].

    Exact claims have tolerance 0. Claims that sum in another order (per-head results,
    padded batches) allow `atol * max(1, max|reference|)`, i.e. a relative error of `atol`.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> checks = run_checks(model, torch.randint(0, 50, (1, 5)))
        >>> all(c.passed for c in checks), checks[0].name
        (True, 'logits, no hooks (bit-exact)')
    """
    hf = model.hf_model
    ids = ids.to(model.device)
    n = model.cfg.n_layers
    checks: list[Check] = []
    plain = hf(input_ids=ids, use_cache=False, output_hidden_states=True)
    hidden = plain.hidden_states
    with using_implementation(hf, "eager"):
        eager = hf(input_ids=ids, use_cache=False, output_attentions=True)
    hooks_before = _hooks_left(model)  # HF keeps its own output-recording hooks; ours must all go
    checks.append(Check("logits, no hooks (bit-exact)", _diff(model(ids), plain.logits), 0.0))
    not_pattern = [x for x in model.hook_names() if not x.endswith("hook_pattern")]
    logits, cache = model.run_with_cache(ids, names=not_pattern)
    checks.append(Check("logits, every hook cached but patterns (bit-exact)", _diff(logits, plain.logits), 0.0))
    checks.append(Check("resid_pre[0] == hidden_states[0]", _diff(cache[names.resid_pre(0)], hidden[0]), 0.0))
    worst = max(_diff(cache[names.resid_post(layer)], hidden[layer + 1]) for layer in range(n - 1))
    checks.append(Check("resid_post[l] == hidden_states[l+1]", worst, 0.0))
    checks.append(Check("ln_final.hook_out == hidden_states[-1]", _diff(cache[names.LN_FINAL_OUT], hidden[n]), 0.0))
    checks.append(Check("unembed(resid_post[-1]) == logits",
                        _diff(model.unembed(cache[names.resid_post(n - 1)]), plain.logits),
                        atol * _scale(plain.logits)))
    checks.append(Check("sum of hook_result (+ bias) == hook_attn_out (relative)", _result_sum_diff(model, cache),
                        atol))
    if model.family.attn_out == model.family.attn:
        worst = max(_diff(get_module(model.layers[i], model.family.o_proj)(cache[names.z(i)].flatten(-2)),
                          cache[names.attn_out(i)]) for i in range(n))
        checks.append(Check("o_proj(hook_z) == hook_attn_out", worst, 0.0))
    layer = n // 2
    _, early = model.run_with_cache(ids, names=lambda x: x in not_pattern and (names.parse_layer(x) or 0) < layer,
                                   stop_at_layer=layer)
    checks.append(Check(f"stop_at_layer={layer} == full pass", max(_diff(v, cache[k]) for k, v in early.items()), 0.0))
    pattern_logits, patterns = model.run_with_cache(ids, names=lambda x: x.endswith("hook_pattern"))
    with using_implementation(hf, "eager"):  # the same upstream activations as HF's eager run
        _, same_inputs = model.run_with_cache(ids, names=lambda x: x.endswith("hook_pattern"))
    worst = max(_diff(same_inputs[names.pattern(i)], eager.attentions[i]) for i in range(n))
    checks.append(Check("hook_pattern == HF eager attentions (same inputs)", worst, 1e-6))
    worst = max(_diff(patterns[names.pattern(i)], eager.attentions[i]) for i in range(n))
    checks.append(Check("hook_pattern of the model's own run == HF eager run", worst, atol))
    checks.append(Check("logits with patterns cached (bit-exact)", _diff(pattern_logits, plain.logits), 0.0))
    every_logits, _ = model.run_with_cache(ids)
    checks.append(Check("logits, every hook point cached (bit-exact)", _diff(every_logits, plain.logits), 0.0))
    if padded_texts and model.tokenizer is not None:
        checks.append(Check("padded batch rows == unpadded prompts", _padding_diff(model, padded_texts),
                            atol * _scale(plain.logits)))
    checks.append(Check("no hooks left on the model", float(_hooks_left(model) - hooks_before), 0.0))
    return checks


def _result_sum_diff(model: HookedModel, cache: Any) -> float:
    """Largest |sum_h result_h + b_O - attn_out| over layers, relative to max|attn_out|
    (`attn_out` is `o_proj(z)`, or the post-attention norm's output in Gemma 2/3)."""
    worst = 0.0
    post_norm = model.family.attn_out != model.family.attn
    for layer in range(model.cfg.n_layers):
        o_proj = get_module(model.layers[layer], model.family.o_proj)
        projected = cache[names.attn_out(layer)] if post_norm else o_proj(cache[names.z(layer)].flatten(-2))
        total = cache[names.result(layer)].sum(dim=2)
        if getattr(o_proj, "bias", None) is not None and not post_norm:
            total = total + o_proj.bias
        worst = max(worst, _diff(total, projected) / _scale(projected))
    return worst


def _padding_diff(model: HookedModel, texts: list[str]) -> float:
    batch = model.tokenize(texts)
    padded = model(batch)
    worst = 0.0
    for row, text in enumerate(texts):
        alone = model(text)[0]
        length = int(batch.lengths[row])
        worst = max(worst, _diff(padded[row, :length], alone[:length]))
    return worst
