"""Training a tuned lens: minimize KL(p_final || p_tuned) per layer over a corpus; resumable.

Each step runs the model once (no gradient) on a batch of token contexts, caching
`resid_pre` of every block and the final logits, then for each trained site `l`

    loss_l = mean_{batch, pos} KL(softmax(final logits) || softmax(unembed(h_l + A_l h_l + b_l)))

and takes one Adam step on the sum. Translators are independent, so `layers_per_step`
can train a random subset of sites per step (an unbiased, cheaper step on a CPU).

With `checkpoint_dir`, the lens, the optimizer state (`optimizer.safetensors`) and
`train_state.json` (step, losses, settings) are written every `checkpoint_every` steps,
each file replaced atomically; a later call with the same folder resumes where it
stopped (batches are a function of the step index, so a resumed run sees the same data).

Example:
    >>> run = train_tuned_lens(model, steps=300, checkpoint_dir="lens-ckpt", progress=True)  # doctest: +SKIP
    >>> run.lens.save("smollm-lens")                                                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import Tensor

from mechscope.core.corpus import corpus_fingerprint, token_contexts
from mechscope.core.errors import MechscopeError, require_finite
from mechscope.core.files import atomic_write_bytes, atomic_write_json, claim_output_dir
from mechscope.core.hooked import HookedModel
from mechscope.core.optimizer_state import optimizer_from_tensors, optimizer_to_tensors
from mechscope.core.scores import kl_divergence
from mechscope.methods.tuned_lens import TunedLens

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"


@dataclass
class TrainSettings:
    """Tuned-lens training settings (field docs double as CLI help).

    Example:
        >>> settings = TrainSettings(steps=20, batch_size=2, context_length=8)
        >>> settings.lr, settings.source
        (0.001, 'default')
    """

    steps: int = 300  # optimizer steps
    batch_size: int = 4  # contexts per step
    context_length: int = 64  # tokens per context
    lr: float = 1e-3  # Adam learning rate
    layers_per_step: int | None = None  # sites trained per step (None: all)
    seed: int = 0  # picks the sites of each step
    source: str = "default"  # corpus: "default", a file or folder (see mechscope.core.corpus)
    checkpoint_every: int = 50  # steps between checkpoints (with checkpoint_dir)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.context_length < 2 or self.lr <= 0:
            raise MechscopeError(f"Invalid tuned-lens settings: {self}")


@dataclass
class TrainRun:
    """The trained lens and the mean loss (sum over trained sites / sites) of each step.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> run = TrainRun(TunedLens.for_model(model), losses=[3.2, 2.9])
        >>> run.losses[-1], run.resumed_from
        (2.9, 0)
    """

    lens: TunedLens
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0


def training_contexts(model: HookedModel, settings: TrainSettings) -> Tensor:
    """The training token contexts [n, context_length] (train split of the corpus).

    Example:
        >>> import mechscope
        >>> model = mechscope.load_model()                                  # doctest: +SKIP
        >>> training_contexts(model, TrainSettings(steps=10, batch_size=2, context_length=16)).shape  # doctest: +SKIP
        torch.Size([20, 16])
    """
    wanted = settings.steps * settings.batch_size
    ids = token_contexts(model.tokenizer, settings.source, settings.context_length, max_contexts=wanted,
                         batch_size=64, split="train")
    if ids.shape[0] == 0:
        raise MechscopeError(f"The corpus {settings.source!r} gave no contexts of {settings.context_length} tokens.")
    if ids.shape[0] < wanted:
        log.info("Corpus gave %d contexts for %d; cycling through them", ids.shape[0], wanted)
    return ids


def _batch(ids: Tensor, step: int, batch_size: int) -> Tensor:
    rows = (torch.arange(batch_size) + step * batch_size) % ids.shape[0]
    return ids[rows]


def _sites_for_step(n_sites: int, step: int, settings: TrainSettings) -> list[int]:
    if settings.layers_per_step is None or settings.layers_per_step >= n_sites:
        return list(range(n_sites))
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
    return sorted(torch.randperm(n_sites, generator=generator)[: settings.layers_per_step].tolist())


def train_tuned_lens(model: HookedModel, settings: TrainSettings | None = None, lens: TunedLens | None = None,
                     ids: Tensor | None = None, checkpoint_dir: str | Path | None = None,
                     progress: bool = False, force: bool = False) -> TrainRun:
    """Train (or resume training) a tuned lens for `model`; see the module docstring.

    `ids`: training contexts [n, pos] (default: `training_contexts(model, settings)`).
    `checkpoint_dir` is claimed first: a non-empty folder that mechscope did not write needs `force`.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> ids = torch.randint(0, 50, (4, 8))                   # the contexts, given (a file corpus names their source)
        >>> settings = TrainSettings(steps=3, batch_size=2, context_length=8, source="my_corpus.txt")
        >>> run = train_tuned_lens(model, settings, ids=ids)
        >>> len(run.losses), run.lens.sites[0]
        (3, 'blocks.0.hook_resid_pre')
    """
    settings = settings or TrainSettings()
    folder = claim_output_dir(checkpoint_dir, force) if checkpoint_dir is not None else None
    start, losses = 0, []
    if folder is not None and (folder / STATE_FILE).exists():
        lens, start, losses = _resume(folder, model, settings)
    lens = lens or TunedLens.for_model(model)
    optimizer = torch.optim.Adam(lens.parameters(), lr=settings.lr)
    if folder is not None and start:
        _load_optimizer(optimizer, folder)
    data = ids if ids is not None else training_contexts(model, settings)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:  # gradients flow to the lens only; restored below
        p.requires_grad_(False)
    try:
        _loop(model, lens, optimizer, data, settings, start, losses, folder, progress)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    lens.config.training = {**asdict(settings), "steps_done": settings.steps, "final_loss": losses[-1] if losses else None,
                            "corpus_contexts": int(data.shape[0])}
    if settings.source in ("default", "pydoc", "stdlib"):
        lens.config.training["corpus_fingerprint"] = corpus_fingerprint(settings.source, split="train")
    return TrainRun(lens, losses, start)


def _loop(model: HookedModel, lens: TunedLens, optimizer: torch.optim.Optimizer, data: Tensor,
          settings: TrainSettings, start: int, losses: list[float], folder: Path | None, progress: bool) -> None:
    bar = _progress(settings.steps, start, progress)
    for step in range(start, settings.steps):
        batch = _batch(data, step, settings.batch_size).to(model.device)
        chosen = _sites_for_step(len(lens.sites), step, settings)
        names = [lens.sites[i] for i in chosen]
        with torch.no_grad():
            final, cache = model.run_with_cache(batch, names=names)
        assert final is not None
        target = torch.log_softmax(final.float(), dim=-1)
        loss = torch.zeros((), device=model.device)
        for site in names:
            lens_logits = model.unembed(lens.translate(site, cache[site]))
            loss = loss + kl_divergence(target, lens_logits).mean()
        require_finite(loss, f"The tuned-lens training loss at step {step + 1}",
                       "lower --lr, or check the model's weights (its logits must be finite)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()) / len(names))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(kl=f"{losses[-1]:.3f}")
        done = step + 1
        if folder is not None and (done % settings.checkpoint_every == 0 or done == settings.steps):
            save_checkpoint(folder, lens, optimizer, done, losses, settings)
    if bar is not None:
        bar.close()


def save_checkpoint(folder: Path, lens: TunedLens, optimizer: torch.optim.Optimizer, step: int,
                    losses: list[float], settings: TrainSettings) -> None:
    """Write lens, optimizer state and `train_state.json` (the state file last, so it names a complete checkpoint).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> from pathlib import Path
        >>> lens = TunedLens.for_model(model)
        >>> optimizer = torch.optim.Adam(lens.parameters())
        >>> folder = Path("ckpt")
        >>> folder.mkdir()
        >>> save_checkpoint(folder, lens, optimizer, step=0, losses=[], settings=TrainSettings())
        >>> sorted(p.name for p in folder.iterdir())                         # doctest: +ELLIPSIS
        [...'train_state.json'...]
    """
    lens.save(folder)
    tensors, meta = optimizer_to_tensors(optimizer)
    atomic_write_bytes(folder / OPTIMIZER_FILE, save({k: v.cpu() for k, v in tensors.items()}))
    record = {"step": step, "losses": losses, "settings": asdict(settings), "optimizer": meta}
    atomic_write_json(folder / STATE_FILE, record)
    log.info("Tuned-lens checkpoint at step %d in %s", step, folder)


def _resume(folder: Path, model: HookedModel, settings: TrainSettings) -> tuple[TunedLens, int, list[float]]:
    record = json.loads((folder / STATE_FILE).read_text())
    saved = record.get("settings", {})
    for key in ("batch_size", "context_length", "source", "layers_per_step", "seed"):
        if saved.get(key) != getattr(settings, key):
            raise MechscopeError(f"Checkpoint in {folder} was trained with {key}={saved.get(key)!r}, "
                                 f"not {getattr(settings, key)!r}; use another folder or the same settings.")
    lens = TunedLens.load(folder, model)
    log.info("Resuming tuned-lens training at step %d from %s", record["step"], folder)
    return lens, int(record["step"]), list(record.get("losses", []))


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    record = json.loads((folder / STATE_FILE).read_text())
    if "optimizer" not in record:
        raise MechscopeError(f"The checkpoint in {folder} was written by an older mechscope; train into a new folder.")
    optimizer.load_state_dict(optimizer_from_tensors(load_file(str(folder / OPTIMIZER_FILE)), record["optimizer"]))


def _progress(total: int, start: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="tuned lens", unit="step")
