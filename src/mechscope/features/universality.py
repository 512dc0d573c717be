"""Feature universality: match the latents of two dictionaries.

- By decoder direction (same site width only): `C = cos(W_dec^A, W_dec^B)` `[n_A, n_B]`; for each
  latent of A the best cosine in B (mean max cosine, MMCS, both ways), and a one-to-one matching
  that maximises the summed cosine (Hungarian, `scipy.optimize.linear_sum_assignment`).
- By activations on the same text: Pearson correlation of every pair of latents over tokens,
  best match per latent and a Hungarian matching. Two dictionaries of different models see
  different tokenizations; they are aligned by character spans: each token of A is paired with
  the maximum activation of B over B's tokens whose character spans overlap it.

Quality distribution: a histogram of the matched values; the fraction above a threshold. Chance
level of activation matching: the same statistics with B's tokens rolled out of alignment
(`shifted_baseline`).

Example:
    >>> import torch
    >>> W = torch.eye(3)
    >>> decoder_match(W, W[[2, 0, 1]])["hungarian_mean"]
    1.0
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from mechscope.core.errors import MechscopeError


def _unit(W: Tensor) -> Tensor:
    W = W.detach().double()
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


def summarise(similarity: np.ndarray, threshold: float, bins: int = 20) -> dict[str, Any]:
    """Best-match and Hungarian statistics of a similarity matrix `[n_A, n_B]`.

    Example:
        >>> s = summarise(np.array([[0.9, 0.1], [0.2, 0.8]]), threshold=0.85)
        >>> s["hungarian_pairs"], round(s["hungarian_mean"], 6), s["fraction_above_threshold"]
        ([[0, 0, 0.9], [1, 1, 0.8]], 0.85, 0.5)
    """
    best_a, best_b = similarity.max(axis=1), similarity.max(axis=0)
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    matched = similarity[rows, cols]
    hist, edges = np.histogram(matched, bins=bins, range=(-1.0, 1.0))
    return {
        "mean_max_a_to_b": float(best_a.mean()), "mean_max_b_to_a": float(best_b.mean()),
        "hungarian_mean": float(matched.mean()),
        "fraction_above_threshold": float((matched > threshold).mean()), "threshold": threshold,
        "hungarian_pairs": [[int(r), int(c), float(v)] for r, c, v in zip(rows, cols, matched, strict=True)],
        "best_a": best_a.tolist(), "histogram": {"edges": edges.tolist(), "counts": hist.tolist()},
    }


def decoder_match(W_a: Tensor, W_b: Tensor, threshold: float = 0.7) -> dict[str, Any]:
    """Match decoder rows `W_a [n_A, d]` and `W_b [n_B, d]` by cosine similarity.

    Example:
        >>> W = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> result = decoder_match(W, W[[1, 0]])                         # the same directions, swapped
        >>> result["hungarian_pairs"], result["mean_max_a_to_b"]
        ([[0, 1, 1.0], [1, 0, 1.0]], 1.0)
    """
    if W_a.shape[1] != W_b.shape[1]:
        raise MechscopeError(f"decoder widths differ ({W_a.shape[1]} vs {W_b.shape[1]}): the dictionaries write to "
                             "different spaces; match them by activations instead")
    return summarise((_unit(W_a) @ _unit(W_b).t()).numpy(), threshold)


def correlation_matrix(acts_a: Tensor, acts_b: Tensor, block: int = 2048) -> np.ndarray:
    """Pearson correlation `[n_A, n_B]` of activations `[tokens, n_A]` and `[tokens, n_B]` (0 for constant latents).

    `cov = A^T B - n mean_A mean_B^T` in float64, with `A^T B` taken as a sparse product (a
    dictionary's codes are mostly zero, so this costs `nnz(A) * n_B`, not `tokens * n_A * n_B`)
    over blocks of `block` latents of B; the variances are summed over centred values.

    Example:
        >>> a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 1.0]])     # 4 tokens, 2 latents
        >>> correlation_matrix(a, a[:, [1, 0]]).round(3).tolist()
        [[-0.739, 1.0], [1.0, -0.739]]
    """
    n = acts_a.shape[0]
    a = acts_a.detach().double()
    mean_a = a.mean(0)
    norm_a = (a - mean_a).norm(dim=0)
    a_t = a.t().to_sparse()
    del a
    out = np.zeros((acts_a.shape[1], acts_b.shape[1]), np.float64)
    for start in range(0, acts_b.shape[1], block):
        b = acts_b[:, start:start + block].detach().double()
        mean_b = b.mean(0)
        norm_b = (b - mean_b).norm(dim=0)
        cov = torch.sparse.mm(a_t, b) - n * mean_a[:, None] * mean_b[None, :]
        corr = cov / (norm_a[:, None] * norm_b[None, :]).clamp_min(1e-12)
        corr[norm_a == 0] = 0.0
        corr[:, norm_b == 0] = 0.0
        out[:, start:start + block] = corr.clamp(-1.0, 1.0).numpy()
    return out


def activation_match(acts_a: Tensor, acts_b: Tensor, threshold: float = 0.7) -> dict[str, Any]:
    """Match latents by the correlation of their activations on the same tokens.

    Example:
        >>> a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
        >>> activation_match(a, a[:, [1, 0]])["hungarian_pairs"]
        [[0, 1, 1.0], [1, 0, 1.0]]
    """
    if acts_a.shape[0] != acts_b.shape[0]:
        raise MechscopeError(f"activations cover {acts_a.shape[0]} and {acts_b.shape[0]} tokens; align them first")
    return summarise(correlation_matrix(acts_a, acts_b), threshold)


def align_by_spans(spans_a: list[tuple[int, int]], spans_b: list[tuple[int, int]], acts_b: Tensor) -> Tensor:
    """For each token of A (char span), the max activation of B over B's tokens overlapping it `[n_tokens_A, n_B]`.

    Example:
        >>> align_by_spans([(0, 4)], [(0, 2), (2, 4), (4, 6)], torch.tensor([[1.0], [3.0], [9.0]])).tolist()
        [[3.0]]
    """
    out = acts_b.new_zeros(len(spans_a), acts_b.shape[1])
    j0 = 0
    for i, (s, e) in enumerate(spans_a):
        while j0 < len(spans_b) and spans_b[j0][1] <= s:
            j0 += 1
        j = j0
        hits = []
        while j < len(spans_b) and spans_b[j][0] < e:
            if spans_b[j][1] > s:
                hits.append(j)
            j += 1
        if hits:
            out[i] = acts_b[hits].amax(0)
    return out


def shifted_baseline(acts_a: Tensor, acts_b: Tensor, threshold: float = 0.7, shift: int | None = None) -> dict[str, Any]:
    """Chance level of the best-match statistics: B's token rows rolled by `shift` (default half the tokens).

    Each latent keeps its own activations and density but loses its alignment with A's tokens, so
    the mean max correlation that remains is what the number of candidates and sparsity give alone.

    Example:
        >>> a = torch.eye(6)[:, :3]
        >>> shifted_baseline(a, a, shift=3)["mean_max_a_to_b"] < 0
        True
    """
    n = acts_a.shape[0]
    if acts_b.shape[0] != n:
        raise MechscopeError(f"activations cover {n} and {acts_b.shape[0]} tokens; align them first")
    shift = n // 2 if shift is None else shift
    corr = correlation_matrix(acts_a, torch.roll(acts_b, shift, dims=0))
    best_a = corr.max(axis=1)
    return {"shift": shift, "tokens": n, "mean_max_a_to_b": float(best_a.mean()),
            "mean_max_b_to_a": float(corr.max(axis=0).mean()), "threshold": threshold,
            "fraction_best_a_above_threshold": float((best_a > threshold).mean())}


def aligned_activations(model_a: Any, dictionary_a: Any, model_b: Any, dictionary_b: Any, documents: Iterable[str],
                        n_tokens: int, piece_chars: int = 600) -> tuple[Tensor, Tensor]:
    """Activations of A and B on the same text `[tokens_A, n_A]`, `[tokens_A, n_B]`, B aligned to A's tokens.

    The documents are cut into pieces of `piece_chars` characters, each run through both models
    (BOS prepended, not counted) until `n_tokens` of A's tokens are reached. With one model for
    both (`model_b is model_a`) the tokens are the same; otherwise B is aligned by `align_by_spans`.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> from mechscope.dictionaries.relu import ReluSAE, ReluSAEConfig
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> sae = ReluSAE(ReluSAEConfig(d_in=16, d_sae=32, hook_name="blocks.0.hook_resid_post"), seed=0)
        >>> other = ReluSAE(ReluSAEConfig(d_in=16, d_sae=8, hook_name="blocks.1.hook_resid_post"), seed=1)
        >>> acts_a, acts_b = aligned_activations(model, sae, model, other, ["the cat sat on a mat"], n_tokens=4)
        >>> acts_a.shape, acts_b.shape                                   # every token of the one piece
        (torch.Size([6, 32]), torch.Size([6, 8]))
    """
    rows_a, rows_b, total = [], [], 0
    for doc in documents:
        for start in range(0, len(doc), piece_chars):
            piece = doc[start:start + piece_chars]
            if not piece.strip():
                continue
            acts_a, spans_a = text_activations(model_a, dictionary_a, piece)
            acts_b, spans_b = text_activations(model_b, dictionary_b, piece)
            rows_a.append(acts_a)
            rows_b.append(acts_b if model_b is model_a else align_by_spans(spans_a, spans_b, acts_b))
            total += acts_a.shape[0]
            if total >= n_tokens:
                return torch.cat(rows_a), torch.cat(rows_b)
    if not rows_a:
        raise MechscopeError("the documents gave no text to compare the dictionaries on")
    return torch.cat(rows_a), torch.cat(rows_b)


@torch.no_grad()
def text_activations(model: Any, dictionary: Any, text: str) -> tuple[Tensor, list[tuple[int, int]]]:
    """Latent activations `[tokens, d_sae]` of one text (no BOS) and each token's character span.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> from mechscope.dictionaries.relu import ReluSAE, ReluSAEConfig
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> sae = ReluSAE(ReluSAEConfig(d_in=16, d_sae=32, hook_name="blocks.0.hook_resid_post"), seed=0)
        >>> acts, spans = text_activations(model, sae, "the cat sat")
        >>> acts.shape, spans
        (torch.Size([3, 32]), [(0, 3), (4, 7), (8, 11)])
    """
    from mechscope.features.collect import encode_contexts

    enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    spans = [tuple(map(int, s)) for s in enc["offset_mapping"]]
    bos = getattr(model.tokenizer, "bos_token_id", None)
    prefix = [bos] if bos is not None else []
    acts, _ = encode_contexts(model, dictionary, torch.tensor([prefix + ids]))
    return acts[0, len(prefix):], spans  # type: ignore[return-value]


def plot_match(result: dict[str, Any], title: str) -> Any:
    """Histograms of the matched values (decoder cosine and/or activation correlation).

    Example:
        >>> W = torch.eye(3)
        >>> fig = plot_match({"decoder": decoder_match(W, W[[2, 0, 1]])}, "A against a permuted copy")
        >>> len(fig.axes), fig.axes[0].get_xlabel()
        (1, 'decoder cosine')
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [(k, v) for k, v in (("decoder cosine", result.get("decoder")),
                                 ("activation correlation", result.get("activations"))) if v]
    fig, axes = plt.subplots(1, len(parts), figsize=(5 * len(parts), 3.4), squeeze=False)
    for ax, (label, part) in zip(axes[0], parts, strict=True):
        matched = [p[2] for p in part["hungarian_pairs"]]
        ax.hist(matched, bins=40, range=(-1, 1), color="#4c72b0", alpha=0.8, label="Hungarian match")
        ax.hist(part["best_a"], bins=40, range=(-1, 1), histtype="step", color="#dd8452", label="best match of A")
        ax.axvline(part["threshold"], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(label)
        ax.set_ylabel("latents")
        ax.set_title(f"{label}\nmean max A->B {part['mean_max_a_to_b']:.3f}, Hungarian {part['hungarian_mean']:.3f}, "
                     f"above {part['threshold']}: {part['fraction_above_threshold']:.1%}", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10, y=1.06)
    return fig
