"""Induction toy: a 2-layer attention-only transformer trained from scratch to copy repeated spans.

Training data (no absolute or fixed-offset shortcut): each sequence is `<bos>`, a prefix of
0..`prefix_max` random tokens, then back-to-back segments `[X, filler, X]` where X is a span of
L uniform random tokens (L drawn per segment from `span_min..span_max`) and the filler is
0..`gap_max` random tokens; the last segment is cut at `seq_len`. Where a copy starts and how
far back its source lies vary per segment, so neither the absolute position nor a fixed
offset predicts the next token; only "find the earlier occurrence of the current token and
copy what followed it" does. Positions are rotary (relative), so a previous-token head is a
fixed rotation in layer 0 and the model has no absolute position to build a shortcut from.
The loss is the mean next-token cross-entropy over all positions (AdamW, linear warm-up).
With the defaults the model learns the textbook circuit: a layer-0 previous-token head whose
output a layer-1 induction head reads (K-composition) to attend to the token after the
earlier copy; check with `mechscope.methods.heads` (detectors and head ablation).

Tracked through training on a fixed set of repeated random sequences `[bos, r, r]`
(`eval_span` tokens each copy): the loss on the second copy. It sits at chance,
`ln(n_tokens)`, until the induction circuit forms, then falls quickly (the phase change);
`phase_change_step` is the first evaluation step where it is below half of chance.

Example:
    >>> result = train_induction_toy(InductionToyConfig(steps=1500), out_dir="induction-toy")  # doctest: +SKIP
    >>> model = mechscope.load_model("induction-toy")                                           # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechscope.core.errors import require_finite
from mechscope.core.files import atomic_write_json, claim_output_dir
from mechscope.core.hooked import HookedModel
from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM

log = logging.getLogger(__name__)

BOS_ID = 0
HISTORY_FILE = "training_history.json"


@dataclass
class InductionToyConfig:
    """Model shape and training schedule of the induction toy.

    Example:
        >>> cfg = InductionToyConfig(n_heads=4)
        >>> cfg.model_config().num_attention_heads, cfg.model_config().vocab_size   # ids 1..64 and <bos>
        (4, 65)
    """

    n_tokens: int = 64  # random-token ids 1..n_tokens; id 0 is <bos>
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    seq_len: int = 64
    span_min: int = 4
    span_max: int = 16
    gap_max: int = 8  # random filler tokens between the two copies of a span
    prefix_max: int = 16  # random tokens between <bos> and the first span
    positions: str = "rotary"  # "rotary" (relative) or "learned" (absolute) position information
    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 100  # steps of linear learning-rate warm-up
    weight_decay: float = 0.01
    eval_every: int = 25
    eval_span: int = 20
    eval_batch: int = 64
    seed: int = 0
    threads: int | None = 1  # torch threads while training; small matrices run fastest on one

    def __post_init__(self) -> None:
        if not 2 <= self.span_min <= self.span_max or 2 * self.span_max + 1 > self.seq_len:
            raise ValueError(f"need 2 <= span_min <= span_max and 2 * span_max + 1 <= seq_len; got {self}")
        if self.gap_max < 0 or self.prefix_max < 0 or self.prefix_max + 2 * self.span_min + 1 > self.seq_len:
            raise ValueError(f"need gap_max, prefix_max >= 0 and room for one span after the prefix; got {self}")
        if 2 * self.eval_span + 1 > self.seq_len or self.eval_span > self.n_tokens:
            raise ValueError(
                f"eval_span={self.eval_span} does not fit seq_len={self.seq_len} / n_tokens={self.n_tokens}"
            )

    def model_config(self) -> AttnOnlyConfig:
        return AttnOnlyConfig(
            vocab_size=self.n_tokens + 1,
            hidden_size=self.d_model,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            max_position_embeddings=self.seq_len,
            bos_token_id=BOS_ID,
            positions=self.positions,
        )


@dataclass
class InductionToyResult:
    """The trained model, the loss curves and where the phase change happened.

    Example:
        >>> cfg = InductionToyConfig(n_tokens=8, d_model=16, seq_len=16, span_min=2, span_max=4, gap_max=2, prefix_max=2,
        ...                          steps=2, batch_size=4, eval_every=1, eval_span=4, eval_batch=4)
        >>> result = train_induction_toy(cfg)
        >>> len(result.history), round(result.chance_loss, 3)                      # chance: ln(n_tokens)
        (2, 2.079)
    """

    model: HookedModel
    history: list[dict[str, float]] = field(default_factory=list)
    phase_change_step: int | None = None
    chance_loss: float = 0.0
    seconds: float = 0.0


def training_batch(cfg: InductionToyConfig, generator: torch.Generator) -> Tensor:
    """Ids [batch, seq_len]: `<bos>`, a random prefix, then segments `[X, filler, X]` (see the module docstring).

    Every sequence draws its own prefix length, and every segment its own span length L and
    filler length; tokens outside the second copies are uniform random ids 1..n_tokens.

    Example:
        >>> ids = training_batch(InductionToyConfig(batch_size=2), torch.Generator().manual_seed(0))
        >>> ids.shape, ids[:, 0].tolist()
        (torch.Size([2, 64]), [0, 0])
    """
    ids = torch.randint(1, cfg.n_tokens + 1, (cfg.batch_size, cfg.seq_len), generator=generator)
    ids[:, 0] = BOS_ID
    for row in ids:
        for start, source, length in copy_segments(cfg, generator):
            row[start : start + length] = row[source : source + length]
    return ids


def copy_segments(cfg: InductionToyConfig, generator: torch.Generator) -> list[tuple[int, int, int]]:
    """`(start, source, length)` of every second copy in one sequence: ids[start + i] = ids[source + i].

    Example:
        >>> segments = copy_segments(InductionToyConfig(), torch.Generator().manual_seed(0))
        >>> all(source + length <= start for start, source, length in segments)   # each copy follows its source
        True
    """

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    segments: list[tuple[int, int, int]] = []
    pos = 1 + draw(0, cfg.prefix_max)
    while pos + 2 * cfg.span_min <= cfg.seq_len:
        span, gap = draw(cfg.span_min, cfg.span_max), draw(0, cfg.gap_max)
        start = pos + span + gap
        if start + 2 > cfg.seq_len:  # fewer than two copied tokens fit: nothing to learn from
            break
        segments.append((start, pos, min(span, cfg.seq_len - start)))
        pos = start + span
    return segments


def repeated_sequences(n_tokens: int, span: int, batch: int, seed: int) -> Tensor:
    """Ids [batch, 1 + 2 * span]: `<bos>`, `span` distinct random tokens, the same tokens again.

    Example:
        >>> ids = repeated_sequences(n_tokens=64, span=3, batch=1, seed=0)
        >>> ids.shape, bool((ids[0, 1:4] == ids[0, 4:7]).all())
        (torch.Size([1, 7]), True)
    """
    generator = torch.Generator().manual_seed(seed)
    half = torch.stack([torch.randperm(n_tokens, generator=generator)[:span] + 1 for _ in range(batch)])
    return torch.cat([torch.full((batch, 1), BOS_ID), half, half], dim=1)


def copy_losses(model: torch.nn.Module, ids: Tensor) -> tuple[float, float]:
    """Mean next-token loss on the first copy (predicting r_2..r_L) and on the second copy.

    Example:
        >>> model = AttnOnlyForCausalLM(InductionToyConfig().model_config())
        >>> first, second = copy_losses(model, repeated_sequences(64, span=10, batch=4, seed=0))
        >>> abs(second - math.log(65)) < 0.5                                       # untrained: about chance
        True
    """
    span = (ids.shape[1] - 1) // 2
    with torch.no_grad():
        logits = model(ids).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    return float(nll[:, 1:span].mean()), float(nll[:, span + 1 : 2 * span].mean())


def toy_tokenizer(n_tokens: int) -> Any:
    """A word-level tokenizer: '<bos>' is id 0, 't1'..'tN' are ids 1..N; text is space-separated tokens.

    Example:
        >>> tok = toy_tokenizer(8)
        >>> tok("t3 t1 t3")["input_ids"]
        [0, 3, 1, 3]
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": BOS_ID, **{f"t{i}": i for i in range(1, n_tokens + 1)}}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<bos>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    inner.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=inner, bos_token="<bos>", unk_token="<bos>", pad_token="<bos>"
    )


def train_induction_toy(
    cfg: InductionToyConfig | None = None, out_dir: str | Path | None = None, progress: bool = False,
    force: bool = False,
) -> InductionToyResult:
    """Train the toy from scratch (AdamW, linear warm-up then constant rate); save it to `out_dir` if given.

    `out_dir` receives `config.json`, `model.safetensors`, the tokenizer and
    `training_history.json` (the config, loss curves and phase-change step). It is claimed
    before training starts: a non-empty folder that mechscope did not write is refused unless `force`.

    Example:
        >>> cfg = InductionToyConfig(n_tokens=8, d_model=16, seq_len=16, span_min=2, span_max=4, gap_max=2, prefix_max=2,
        ...                          steps=2, batch_size=4, eval_every=1, eval_span=4, eval_batch=4)
        >>> result = train_induction_toy(cfg, out_dir="tiny-toy")                  # 2 steps: far from trained
        >>> result.model.cfg.n_layers, (Path("tiny-toy") / "model.safetensors").exists()
        (2, True)
    """
    cfg = cfg or InductionToyConfig()
    if out_dir is not None:
        claim_output_dir(out_dir, force)
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, out_dir, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _train(cfg: InductionToyConfig, out_dir: str | Path | None, progress: bool) -> InductionToyResult:
    torch.manual_seed(cfg.seed)
    model = AttnOnlyForCausalLM(cfg.model_config()).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(cfg.warmup, 1)))
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    eval_ids = repeated_sequences(cfg.n_tokens, cfg.eval_span, cfg.eval_batch, seed=cfg.seed + 2)
    chance = math.log(cfg.n_tokens)
    history: list[dict[str, float]] = []
    phase_step: int | None = None
    bar = _progress(cfg.steps, progress)
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        ids = training_batch(cfg, generator)
        loss = model(ids, labels=ids).loss
        require_finite(loss, f"The training loss at step {step}", "lower the learning rate or use another --seed")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        value = float(loss.detach())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            first, second = copy_losses(model, eval_ids)
            history.append(
                {
                    "step": step,
                    "train_loss": value,
                    "first_copy_loss": first,
                    "second_copy_loss": second,
                }
            )
            if phase_step is None and second < chance / 2:
                phase_step = step
            log.info("step %d: train loss %.3f, repeated-copy loss %.3f", step, value, second)
            if bar is not None:
                bar.set_postfix(loss=f"{value:.3f}", repeated=f"{second:.3f}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()
    hooked = HookedModel(model, toy_tokenizer(cfg.n_tokens), name="induction-toy")
    result = InductionToyResult(hooked, history, phase_step, chance, time.perf_counter() - start)
    if out_dir is not None:
        save_toy(result, cfg, out_dir)
    return result


def save_toy(result: InductionToyResult, cfg: InductionToyConfig, out_dir: str | Path, force: bool = False) -> Path:
    """Write the model (safetensors + config.json), tokenizer and training history to `out_dir`.

    The folder must be new, empty or mechscope's (`claim_output_dir`) unless `force`.

    Example:
        >>> cfg = InductionToyConfig(n_tokens=8, d_model=16, seq_len=16, span_min=2, span_max=4, gap_max=2, prefix_max=2,
        ...                          steps=2, batch_size=4, eval_every=1, eval_span=4, eval_batch=4)
        >>> save_toy(train_induction_toy(cfg), cfg, "toy").name
        'toy'
    """
    folder = claim_output_dir(out_dir, force)
    result.model.hf_model.save_pretrained(folder)
    if result.model.tokenizer is not None:
        result.model.tokenizer.save_pretrained(folder)
    record = {
        "config": asdict(cfg),
        "history": result.history,
        "phase_change_step": result.phase_change_step,
        "chance_loss": result.chance_loss,
        "seconds": round(result.seconds, 2),
    }
    atomic_write_json(folder / HISTORY_FILE, record)
    return folder


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="induction toy", unit="step")
