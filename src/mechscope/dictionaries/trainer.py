"""Train any dictionary on a stream of activation batches (single process or under torchrun/DDP).

Batches are tensors `[batch, d_in]` (SAEs) or pairs `([batch, d_in], [batch, d_out])`
(transcoders). The trainer: estimates once the input scale that gives a mean norm of
`sqrt(d_in)` (stored in the dictionary config, so outputs stay in model units); initialises
`b_dec` at the geometric median or mean of a sample; runs Adam with linear LR warm-up and a
linear decay to zero over the last `lr_decay_fraction` of the steps; warms the sparsity
coefficient up linearly; clips gradients; tracks dead latents (no firing in the last
`dead_window_tokens` tokens), fed to the AuxK loss of TopK-style dictionaries or resampled for
the others; with `target_l0`, steers the sparsity coefficient of penalty architectures (ReLU-L1,
JumpReLU, Gated) so that the L0 ends at the target (see `L0Controller`); stops with one clear
error naming the step when the loss turns NaN or Inf (the last checkpoint is kept); logs L0, explained variance and dead fraction to a tqdm bar, a JSONL file and
(optionally) wandb; and writes resumable checkpoints. A resumed run ends bit-identical to an
uninterrupted one given the same batches and seed.

Example:
    >>> import torch
    >>> from mechscope.dictionaries import make_dictionary
    >>> sae = make_dictionary("topk", d_in=8, d_sae=32, k=2, seed=0)
    >>> batches = (torch.randn(64, 8) for _ in range(5))
    >>> result = Trainer(sae, TrainerConfig(total_steps=5, progress=False)).fit(batches)
    >>> result.steps
    5
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from mechscope.dictionaries import checkpoint as ckpt
from mechscope.dictionaries.base import Dictionary
from mechscope.dictionaries.errors import CheckpointError, DictionaryConfigError, TrainingDivergedError
from mechscope.dictionaries.initialisation import decoder_bias_init
from mechscope.dictionaries.metrics import dead_fraction, explained_variance, fixed_norm_scale
from mechscope.dictionaries.resampling import resample_dead_latents
from mechscope.dictionaries.schedule import L0Controller, default_lr

logger = logging.getLogger(__name__)


# Settings that may change between a run and its resumption without changing its result.
_FREE_ON_RESUME = ("progress", "log_path", "log_every", "wandb_project", "checkpoint_dir", "checkpoint_every")


@dataclass
class TrainerConfig:
    """Optimisation settings. `total_steps` counts optimizer steps (one batch each).

    `None` means the default rule: `lr` -> `default_lr(d_sae, batch)`; `lr_warmup_steps` -> 5% of
    the steps; `sparsity_warmup_steps` -> 10%; `dead_window_tokens` -> `min(1_000_000,
    total tokens / 10)`; `resample_every` (dictionaries without AuxK) -> every sixth of the run,
    never during the final learning-rate decay (0 turns resampling off). `target_l0` (penalty architectures only) turns on
    the `L0Controller` with `l0_controller_gain`; the coefficient it reached is written back into
    the dictionary config at the end of `fit`.

    Example:
        >>> cfg = TrainerConfig(total_steps=100, lr=1e-3)
        >>> cfg.lr_warmup_steps, cfg.sparsity_warmup_steps, cfg.lr_at(0), cfg.lr_at(99)
        (5, 10, 0.0002, 5e-05)
        >>> TrainerConfig(total_steps=0)
        Traceback (most recent call last):
        ...
        mechscope.dictionaries.errors.DictionaryConfigError: total_steps, init_batches and log_every must be positive
    """

    total_steps: int
    lr: float | None = None
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    lr_warmup_steps: int | None = None
    lr_decay_fraction: float = 0.2
    sparsity_warmup_steps: int | None = None
    b_dec_init: str = "geometric_median"
    normalize_input: bool = True
    init_batches: int = 4
    dead_window_tokens: int | None = None
    resample_every: int | None = None
    grad_clip_norm: float | None = 1.0
    seed: int = 0
    shard_batches: bool = True
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    log_path: str | None = None
    log_every: int = 10
    progress: bool = True
    wandb_project: str | None = None
    target_l0: float | None = None
    l0_controller_gain: float = 0.05

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)  # type: ignore[assignment]
        if self.total_steps <= 0 or self.init_batches <= 0 or self.log_every <= 0:
            raise DictionaryConfigError("total_steps, init_batches and log_every must be positive")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise DictionaryConfigError(f"lr must be a positive number (or None for the default), got {self.lr!r}")
        if self.target_l0 is not None and not self.target_l0 > 0:
            raise DictionaryConfigError(f"target_l0 must be positive, got {self.target_l0!r}")
        if not self.l0_controller_gain > 0:
            raise DictionaryConfigError(f"l0_controller_gain must be positive, got {self.l0_controller_gain!r}")
        if not 0 <= self.lr_decay_fraction <= 1:
            raise DictionaryConfigError(f"lr_decay_fraction must be in [0, 1], got {self.lr_decay_fraction}")
        if self.b_dec_init not in ("geometric_median", "mean", "zeros"):
            raise DictionaryConfigError(f"b_dec_init must be geometric_median, mean or zeros, got {self.b_dec_init!r}")
        if self.checkpoint_every is not None and (self.checkpoint_every <= 0 or not self.checkpoint_dir):
            raise DictionaryConfigError("checkpoint_every needs a positive value and a checkpoint_dir")
        if self.resample_every is not None and self.resample_every < 0:
            raise DictionaryConfigError("resample_every must be >= 0 (0: never)")
        if self.lr_warmup_steps is None:
            self.lr_warmup_steps = self.total_steps // 20
        if self.sparsity_warmup_steps is None:
            self.sparsity_warmup_steps = self.total_steps // 10

    def lr_at(self, step: int, base: float | None = None) -> float:
        """LR of 0-based `step`: `lr * min(1, (step+1)/warmup) * min(1, (total-step)/(decay_fraction*total))`.

        `base` replaces `lr` (the trainer passes the default rate when `lr` is None).
        """
        lr = base if base is not None else self.lr
        if lr is None:
            raise DictionaryConfigError("lr_at needs a base rate when lr is None")
        warm = min(1.0, (step + 1) / self.lr_warmup_steps) if self.lr_warmup_steps else 1.0
        decay_len = self.lr_decay_fraction * self.total_steps
        decay = min(1.0, (self.total_steps - step) / decay_len) if decay_len > 0 else 1.0
        return lr * warm * decay

    def sparsity_scale_at(self, step: int) -> float:
        """Sparsity-coefficient multiplier: `min(1, (step+1)/sparsity_warmup_steps)`."""
        return min(1.0, (step + 1) / self.sparsity_warmup_steps) if self.sparsity_warmup_steps else 1.0


@dataclass
class TrainResult:
    """`steps` done in total, and the metrics of the last logged step.

    Example:
        >>> from mechscope.dictionaries import make_dictionary
        >>> sae = make_dictionary("relu", d_in=8, d_sae=16, seed=0)
        >>> result = Trainer(sae, TrainerConfig(total_steps=3, log_every=1, progress=False)).fit(
        ...     torch.randn(32, 8) for _ in range(3))
        >>> result.steps, "l0" in result.metrics
        (3, True)
    """

    steps: int
    metrics: dict[str, float] = field(default_factory=dict)


def _adam(params: list[torch.nn.Parameter], config: TrainerConfig) -> torch.optim.Adam:
    """Adam with the fused single-pass kernel where the device supports it (several times faster on CPU)."""
    kwargs: dict[str, Any] = {"lr": config.lr or 1e-3, "betas": config.adam_betas, "eps": config.adam_eps}
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, **kwargs)


def _jsonable_config(config: TrainerConfig) -> dict[str, Any]:
    """The config as JSON would read it back (tuples become lists), for comparison with a checkpoint's."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _split(batch: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1]
    return batch, None


class Trainer:
    """Trains `dictionary` in place. Under `torchrun`, wraps it in DistributedDataParallel (gloo on CPU).

    Example:
        >>> from mechscope.dictionaries import make_dictionary
        >>> sae = make_dictionary("topk", d_in=8, d_sae=32, k=2, seed=0)
        >>> trainer = Trainer(sae, TrainerConfig(total_steps=4, progress=False, checkpoint_dir="ckpt",
        ...                                      checkpoint_every=2))
        >>> trainer.fit(torch.randn(64, 8) for _ in range(4)).steps
        4
        >>> again = Trainer(make_dictionary("topk", d_in=8, d_sae=32, k=2, seed=0), trainer.config)
        >>> again.load_checkpoint("ckpt")
        >>> again.step, torch.equal(again.dictionary.W_dec, sae.W_dec)
        (4, True)
    """

    def __init__(self, dictionary: Dictionary, config: TrainerConfig) -> None:
        self.dictionary = dictionary
        self.config = config
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.generator = torch.Generator().manual_seed(config.seed)
        self.tokens_since_fired = torch.zeros(dictionary.cfg.d_sae, dtype=torch.int64)
        self.step = 0
        self.local_tokens = 0  # tokens this process trained on (its slices of the global batches)
        coefficient = dictionary.cfg.sparsity_coefficient
        if config.target_l0 is not None and coefficient is None:
            raise DictionaryConfigError(f"target_l0 needs a penalty architecture (relu, jumprelu, gated); "
                                        f"{dictionary.cfg.architecture} sets its L0 with k")
        self.controller = L0Controller(config.target_l0, config.l0_controller_gain) if config.target_l0 else None
        self.base_lr = config.lr  # resolved from the first batch when None
        self.dead_window = config.dead_window_tokens
        self.optimizer = _adam(list(dictionary.parameters()), config)
        self._model: torch.nn.Module = dictionary
        self._log_file: Any = None
        self._wandb: Any = None

    # -- data ---------------------------------------------------------------------------------
    def _local(self, batch: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
        x, t = _split(batch)
        if self.distributed and self.config.shard_batches:
            if x.shape[0] % self.world:
                raise DictionaryConfigError(f"global batch {x.shape[0]} not divisible by world size {self.world}")
            n = x.shape[0] // self.world
            sl = slice(self.rank * n, (self.rank + 1) * n)
            x, t = x[sl], (t[sl] if t is not None else None)
        return x, t

    def _gather(self, t: Tensor) -> Tensor:
        """All ranks' rows of `t`, in rank order (the global batch when shards are contiguous)."""
        if not self.distributed:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def _initialise(self, first: list[tuple[Tensor, Tensor | None]]) -> None:
        d = self.dictionary
        xs = self._gather(torch.cat([x for x, _ in first]))
        ts = xs if first[0][1] is None else self._gather(torch.cat([t for _, t in first]))  # type: ignore[misc]
        for name, value in (("input", xs), ("target", ts)):
            if not torch.isfinite(value).all():
                raise DictionaryConfigError(f"the first {name} batches contain NaN or Inf activations")
        if self.config.normalize_input:
            d.cfg.input_scale = fixed_norm_scale(xs)
            d.cfg.output_scale = d.cfg.input_scale if first[0][1] is None else fixed_norm_scale(ts)
        with torch.no_grad():
            sample = (ts.to(d.b_dec.dtype) * d.cfg.output_scale)  # type: ignore[operator]
            d.b_dec.copy_(decoder_bias_init(sample, self.config.b_dec_init))
        logger.info("input scale %.6g, output scale %.6g", d.cfg.input_scale, d.cfg.output_scale)

    # -- checkpoints --------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "dictionary_config": self.dictionary.cfg.to_dict(),
            "trainer_config": _jsonable_config(self.config),
            "tokens_since_fired": self.tokens_since_fired.tolist(),
            "generator_state": ckpt.generator_state_to_json(self.generator),
            "world_size": self.world,
            "base_lr": self.base_lr,
            "sparsity_multiplier": self.controller.multiplier if self.controller else 1.0,
        }

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 only); returns its folder."""
        path = None
        if self.rank == 0:
            assert self.config.checkpoint_dir is not None
            path = ckpt.save_checkpoint(self.config.checkpoint_dir, self.step, self.dictionary,
                                        self.optimizer, self._state())
            logger.info("checkpoint written to %s", path)
        if self.distributed:
            dist.barrier()
        return path

    def load_checkpoint(self, path: str | Path, allow_changes: bool = False) -> None:
        """Restore weights, optimizer, counters and generator from a checkpoint folder.

        Settings that differ from the checkpoint's (trainer or dictionary) are listed in one
        `CheckpointError` unless `allow_changes`; sizes and architecture must always match.
        """
        weights, opt_state, state = ckpt.load_checkpoint(path)
        saved = dict(state["dictionary_config"])
        mine = self.dictionary.cfg.to_dict()
        for key in ("architecture", "d_in", "d_sae", "d_out"):
            if saved.get(key) != mine.get(key):
                raise CheckpointError(f"checkpoint has {key}={saved.get(key)!r}, this dictionary {mine.get(key)!r}")
        changes = ckpt.differences(state["trainer_config"], _jsonable_config(self.config), _FREE_ON_RESUME)
        changes += ckpt.differences(saved, mine, ("input_scale", "output_scale"))
        if changes and not allow_changes:
            raise CheckpointError(f"cannot resume from {path}: settings differ from the checkpoint's "
                                  f"({'; '.join(changes)}); use the same settings or allow the changes")
        self.dictionary.cfg.input_scale = float(saved["input_scale"])
        self.dictionary.cfg.output_scale = float(saved["output_scale"])
        self.dictionary.load_state_dict(weights)
        self.optimizer.load_state_dict(opt_state)
        self.tokens_since_fired = torch.tensor(state["tokens_since_fired"], dtype=torch.int64)
        self.generator.set_state(ckpt.generator_state_from_json(state["generator_state"]))
        self.step = int(state["step"])
        self.base_lr = state.get("base_lr", self.base_lr)
        if self.controller is not None:
            self.controller.multiplier = float(state.get("sparsity_multiplier", 1.0))

    # -- training -----------------------------------------------------------------------------
    def fit(self, batches: Iterable[Any], resume_from: str | Path | None = None,
            skip_consumed: bool = True, allow_changes: bool = False) -> TrainResult:
        """Train until `total_steps`. With `resume_from`, restore that checkpoint first and (with
        `skip_consumed`) skip the batches it already used, so pass the same stream from its start;
        `allow_changes` accepts settings that differ from the checkpoint's."""
        cfg = self.config
        raw: Iterator[Any] = iter(batches)
        if resume_from is not None:
            self.load_checkpoint(resume_from, allow_changes=allow_changes)
            if skip_consumed:
                raw = itertools.islice(raw, self.step, None)
            stream: Iterator[tuple[Tensor, Tensor | None]] = map(self._local, raw)
        else:
            if cfg.checkpoint_dir and ckpt.list_checkpoints(cfg.checkpoint_dir):
                raise CheckpointError(f"{cfg.checkpoint_dir} already holds checkpoints: pass resume_from "
                                      "to continue that run, or choose another checkpoint_dir")
            first = [self._local(b) for b in itertools.islice(raw, cfg.init_batches)]
            if not first:
                raise DictionaryConfigError("the batch stream is empty")
            self._initialise(first)
            stream = itertools.chain(first, map(self._local, raw))
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.dictionary.distributed = True
            self._model = DistributedDataParallel(self.dictionary)
        self._open_logs()
        bar = self._progress()
        metrics: dict[str, float] = {}
        try:
            while self.step < cfg.total_steps:
                try:
                    x, t = next(stream)
                except StopIteration:
                    logger.warning("batch stream ended after %d steps (of %d)", self.step, cfg.total_steps)
                    break
                step_metrics = self.train_step(x, t)
                if step_metrics:
                    metrics = step_metrics
                    self._log(metrics, bar)
                if bar is not None:
                    bar.update(1)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
        if self.controller is not None:  # the coefficient in effect becomes the dictionary's own
            name = self.dictionary.cfg.sparsity_coefficient
            assert name is not None
            setattr(self.dictionary.cfg, name, getattr(self.dictionary.cfg, name) * self.controller.multiplier)
            metrics[name] = getattr(self.dictionary.cfg, name)
            self.controller.multiplier = 1.0
        return TrainResult(self.step, metrics)

    def train_step(self, x: Tensor, t: Tensor | None = None) -> dict[str, float]:
        """One optimizer step on a local batch `x [batch, d_in]` (and `t [batch, d_out]`); metrics on logging steps."""
        cfg, d = self.config, self.dictionary
        step = self.step
        if self.base_lr is None:
            self.base_lr = default_lr(d.cfg.d_sae, x.shape[0] * self.world)
            logger.info("learning rate %.3g (default for d_sae=%d and this batch)", self.base_lr, d.cfg.d_sae)
        lr = cfg.lr_at(step, self.base_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.dead_window is None:
            self.dead_window = cfg.dead_window_tokens or min(1_000_000, cfg.total_steps * x.shape[0] * self.world // 10)
        dead_mask = self.tokens_since_fired >= self.dead_window if d.uses_aux_k else None
        d.training_progress = step / cfg.total_steps
        scale = cfg.sparsity_scale_at(step) * (self.controller.multiplier if self.controller else 1.0)
        out = self._model(x, t, sparsity_scale=scale, dead_mask=dead_mask)
        if not torch.isfinite(out.loss):
            self._diverged(step, float(out.loss.detach()), x, t)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        d.before_optimizer_step()
        if cfg.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(d.parameters(), cfg.grad_clip_norm)
        self.optimizer.step()
        d.after_optimizer_step(self._reduce_min if self.distributed else None)
        counts = out.fired.to(torch.int64)
        n_tokens = x.shape[0]
        self.local_tokens += n_tokens
        active = out.firing_counts.sum().reshape(1).double() if self.controller is not None else None
        if self.distributed:
            dist.all_reduce(counts)
            if active is not None:
                dist.all_reduce(active)
            n_tokens *= self.world
        if self.controller is not None and step >= cfg.sparsity_warmup_steps:
            assert active is not None
            self.controller.update(float(active) / n_tokens)
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[counts > 0] = 0
        self.step += 1
        every = cfg.resample_every if cfg.resample_every is not None else max(1, cfg.total_steps // 6)
        settling = self.step > cfg.total_steps * (1 - cfg.lr_decay_fraction)  # too late to train new latents
        if every and not d.uses_aux_k and self.step % every == 0 and not settling:
            dead = self.tokens_since_fired >= self.dead_window
            if bool(dead.any()):
                n = resample_dead_latents(d, self.optimizer, dead, x, t, self.generator)
                self.tokens_since_fired[dead] = 0
                logger.info("step %d: resampled %d dead latents", self.step, n)
        if self.step % cfg.log_every and self.step != cfg.total_steps:
            return {}
        target = x if t is None else t
        return {
            "step": float(self.step), "lr": lr, "loss": float(out.loss.detach()),
            **{k: float(v.detach()) for k, v in out.losses.items()},
            "l0": float(out.l0), "explained_variance": explained_variance(target, out.reconstruction.detach()),
            "dead_fraction": dead_fraction(self.tokens_since_fired, self.dead_window),
        }

    def _diverged(self, step: int, loss: float, x: Tensor, t: Tensor | None) -> None:
        bad_input = not bool(torch.isfinite(x).all()) or (t is not None and not bool(torch.isfinite(t).all()))
        cause = ("the batch holds NaN or Inf activations" if bad_input
                 else "the inputs are finite: lower the learning rate or the sparsity coefficient")
        kept = ckpt.latest_checkpoint(self.config.checkpoint_dir) if self.config.checkpoint_dir else None
        where = f"; the last good checkpoint {kept} is kept" if kept else ""
        raise TrainingDivergedError(f"training stopped at step {step}: the loss is {loss} ({cause}){where}")

    @staticmethod
    def _reduce_min(value: Tensor) -> Tensor:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return value

    # -- logging ------------------------------------------------------------------------------
    def _open_logs(self) -> None:
        cfg = self.config
        if self.rank != 0:
            return
        if cfg.log_path:
            Path(cfg.log_path).parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(cfg.log_path, "a")  # noqa: SIM115 - closed at the end of fit
        if cfg.wandb_project and self._wandb is None:
            try:
                import wandb  # type: ignore[import-not-found]
            except ImportError:
                logger.warning("wandb_project is set but wandb is not installed; logging to JSONL only")
            else:
                self._wandb = wandb.init(project=cfg.wandb_project, config=dataclasses.asdict(cfg))

    def _progress(self) -> Any:
        if not self.config.progress or self.rank != 0:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.config.total_steps, initial=self.step, desc=f"train {self.dictionary.cfg.architecture}")

    def _log(self, metrics: dict[str, float], bar: Any) -> None:
        if self.rank != 0:
            return
        if bar is not None:
            bar.set_postfix(l0=f"{metrics['l0']:.1f}", ev=f"{metrics['explained_variance']:.3f}",
                            dead=f"{metrics['dead_fraction']:.3f}")
        if self._log_file is not None:
            self._log_file.write(json.dumps(metrics) + "\n")
            self._log_file.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=int(metrics["step"]))
