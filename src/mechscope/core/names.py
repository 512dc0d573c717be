"""The hook-name vocabulary (TransformerLens names) and helpers that build them.

Shapes (batch, pos, d_model, n_heads, n_kv_heads, d_head, d_mlp):

| name | shape |
| --- | --- |
| `hook_embed` | [batch, pos, d_model] |
| `hook_pos_embed` (GPT-2) | [1, pos, d_model], broadcast over the batch as HF computes it |
| `blocks.{l}.hook_resid_pre` / `hook_resid_mid` / `hook_resid_post` | [batch, pos, d_model] |
| `blocks.{l}.hook_q_input` / `hook_k_input`, `hook_v_input` | [batch, pos, n_heads / n_kv_heads, d_model] |
| `blocks.{l}.ln1.hook_scale`, `ln2.hook_scale`, `ln_final.hook_scale` | [batch, pos, 1] |
| `blocks.{l}.ln1.hook_normalized`, `ln2.hook_normalized`, `ln_final.hook_normalized` | [batch, pos, d_model] |
| `blocks.{l}.ln1.hook_out`, `ln2.hook_out`, `ln_final.hook_out` | [batch, pos, d_model] |
| `blocks.{l}.attn.hook_q` | [batch, pos, n_heads, d_head] |
| `blocks.{l}.attn.hook_k`, `hook_v` | [batch, pos, n_kv_heads, d_head] |
| `blocks.{l}.attn.hook_rot_q` / `hook_rot_k` (rotary families) | as `hook_q` / `hook_k` |
| `blocks.{l}.attn.hook_attn_scores`, `hook_pattern` | [batch, n_heads, query_pos, key_pos] |
| `blocks.{l}.attn.hook_z` | [batch, pos, n_heads, d_head] |
| `blocks.{l}.attn.hook_result` | [batch, pos, n_heads, d_model] |
| `blocks.{l}.hook_attn_out`, `blocks.{l}.hook_mlp_out`, `blocks.{l}.hook_mlp_in` | [batch, pos, d_model] |
| `blocks.{l}.mlp.hook_pre`, `mlp.hook_pre_linear` (gated MLPs), `mlp.hook_post` | [batch, pos, d_mlp] |
| `unembed.hook_in` (= `ln_final.hook_out`), `unembed.hook_out` (logits before any final soft-cap) | [batch, pos, d_model], [batch, pos, d_vocab] |

As in TransformerLens, `*.hook_normalized` is the norm's input normalized (centered and
divided by `hook_scale`), before the norm's weight and bias; `*.hook_out` is the norm
module's output, weight (and bias) applied: what the attention, the MLP or the
unembedding reads. `hook_mlp_in` is the MLP norm's input (an edit changes what the MLP
reads, not the residual stream). docs/hook_points.md says what each name is, family by family.

Example:
    >>> resid_pre(3)
    'blocks.3.hook_resid_pre'
    >>> parse_layer("blocks.12.attn.hook_z")
    12
"""

from __future__ import annotations

import re

EMBED = "hook_embed"
POS_EMBED = "hook_pos_embed"
LN_FINAL = "ln_final.hook_normalized"
LN_FINAL_SCALE = "ln_final.hook_scale"
LN_FINAL_OUT = "ln_final.hook_out"
UNEMBED_IN = "unembed.hook_in"
UNEMBED_OUT = "unembed.hook_out"

# Per-block hook suffixes in the order the forward pass reaches them.
BLOCK_SUFFIXES: tuple[str, ...] = (
    "hook_resid_pre",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "ln1.hook_out",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_result",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_in",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "ln2.hook_out",
    "mlp.hook_pre",
    "mlp.hook_pre_linear",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)

_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


def block(layer: int, suffix: str) -> str:
    """`blocks.{layer}.{suffix}`.

    Example:
        >>> block(3, "attn.hook_z")
        'blocks.3.attn.hook_z'
    """
    return f"blocks.{layer}.{suffix}"


def resid_pre(layer: int) -> str:
    """Residual stream entering block `layer`, [batch, pos, d_model].

    Example:
        >>> resid_pre(3)
        'blocks.3.hook_resid_pre'
    """
    return block(layer, "hook_resid_pre")


def resid_mid(layer: int) -> str:
    """Residual stream between attention and MLP of block `layer`, [batch, pos, d_model].

    Example:
        >>> resid_mid(3)
        'blocks.3.hook_resid_mid'
    """
    return block(layer, "hook_resid_mid")


def resid_post(layer: int) -> str:
    """Residual stream leaving block `layer`, [batch, pos, d_model].

    Example:
        >>> resid_post(3)
        'blocks.3.hook_resid_post'
    """
    return block(layer, "hook_resid_post")


def attn_out(layer: int) -> str:
    """Attention output of block `layer` added to the residual stream, [batch, pos, d_model].

    Example:
        >>> attn_out(3)
        'blocks.3.hook_attn_out'
    """
    return block(layer, "hook_attn_out")


def mlp_out(layer: int) -> str:
    """MLP output of block `layer` added to the residual stream, [batch, pos, d_model].

    Example:
        >>> mlp_out(3)
        'blocks.3.hook_mlp_out'
    """
    return block(layer, "hook_mlp_out")


def mlp_pre(layer: int) -> str:
    """MLP pre-activation of block `layer`, [batch, pos, d_mlp].

    Example:
        >>> mlp_pre(3)
        'blocks.3.mlp.hook_pre'
    """
    return block(layer, "mlp.hook_pre")


def mlp_post(layer: int) -> str:
    """MLP activation (after the nonlinearity) of block `layer`, [batch, pos, d_mlp].

    Example:
        >>> mlp_post(3)
        'blocks.3.mlp.hook_post'
    """
    return block(layer, "mlp.hook_post")


def ln1(layer: int) -> str:
    """Normalized input of block `layer`'s attention, [batch, pos, d_model].

    Example:
        >>> ln1(3)
        'blocks.3.ln1.hook_normalized'
    """
    return block(layer, "ln1.hook_normalized")


def ln2(layer: int) -> str:
    """Normalized input of block `layer`'s MLP, [batch, pos, d_model].

    Example:
        >>> ln2(3)
        'blocks.3.ln2.hook_normalized'
    """
    return block(layer, "ln2.hook_normalized")


def q(layer: int) -> str:
    """Queries of block `layer`, [batch, pos, n_heads, d_head].

    Example:
        >>> q(3)
        'blocks.3.attn.hook_q'
    """
    return block(layer, "attn.hook_q")


def k(layer: int) -> str:
    """Keys of block `layer`, [batch, pos, n_kv_heads, d_head].

    Example:
        >>> k(3)
        'blocks.3.attn.hook_k'
    """
    return block(layer, "attn.hook_k")


def v(layer: int) -> str:
    """Values of block `layer`, [batch, pos, n_kv_heads, d_head].

    Example:
        >>> v(3)
        'blocks.3.attn.hook_v'
    """
    return block(layer, "attn.hook_v")


def z(layer: int) -> str:
    """Per-head attention output before W_O of block `layer`, [batch, pos, n_heads, d_head].

    Example:
        >>> z(3)
        'blocks.3.attn.hook_z'
    """
    return block(layer, "attn.hook_z")


def pattern(layer: int) -> str:
    """Attention pattern of block `layer`, [batch, n_heads, query_pos, key_pos].

    Example:
        >>> pattern(3)
        'blocks.3.attn.hook_pattern'
    """
    return block(layer, "attn.hook_pattern")


def attn_scores(layer: int) -> str:
    """Pre-softmax attention scores of block `layer`, [batch, n_heads, query_pos, key_pos].

    Example:
        >>> attn_scores(3)
        'blocks.3.attn.hook_attn_scores'
    """
    return block(layer, "attn.hook_attn_scores")


def rot_q(layer: int) -> str:
    """Queries after the rotary embedding, block `layer`, [batch, pos, n_heads, d_head].

    Example:
        >>> rot_q(3)
        'blocks.3.attn.hook_rot_q'
    """
    return block(layer, "attn.hook_rot_q")


def rot_k(layer: int) -> str:
    """Keys after the rotary embedding, block `layer`, [batch, pos, n_kv_heads, d_head].

    Example:
        >>> rot_k(3)
        'blocks.3.attn.hook_rot_k'
    """
    return block(layer, "attn.hook_rot_k")


def mlp_in(layer: int) -> str:
    """Input of block `layer`'s MLP, [batch, pos, d_model].

    Example:
        >>> mlp_in(3)
        'blocks.3.hook_mlp_in'
    """
    return block(layer, "hook_mlp_in")


def result(layer: int) -> str:
    """Per-head attention output in the residual basis of block `layer`, [batch, pos, n_heads, d_model].

    Example:
        >>> result(3)
        'blocks.3.attn.hook_result'
    """
    return block(layer, "attn.hook_result")


def parse_layer(name: str) -> int | None:
    """The block index in a hook name, or None for names outside the blocks.

    Example:
        >>> parse_layer("blocks.12.attn.hook_z"), parse_layer("hook_embed")
        (12, None)
    """
    match = _LAYER_RE.match(name)
    return int(match.group(1)) if match else None


def suffix_of(name: str) -> str:
    """The part of a block hook name after `blocks.{l}.` (the name itself otherwise).

    Example:
        >>> suffix_of("blocks.12.attn.hook_z"), suffix_of("ln_final.hook_normalized")
        ('attn.hook_z', 'ln_final.hook_normalized')
    """
    match = _LAYER_RE.match(name)
    return name[match.end():] if match else name


def short_site(name: str) -> str:
    """Accept the short site names a CLI user types: 'resid_pre' -> 'hook_resid_pre', 'z' -> 'attn.hook_z'.

    The one table from short site names to hook suffixes; a name it does not know comes back unchanged.

    Example:
        >>> [short_site(s) for s in ("resid_post", "z", "mlp_pre", "mlp_post", "ln2_normalized", "blocks")]
        ['hook_resid_post', 'attn.hook_z', 'mlp.hook_pre', 'mlp.hook_post', 'ln2.hook_normalized', 'blocks']
    """
    for suffix in BLOCK_SUFFIXES:
        tail = suffix.split(".")[-1]
        if name in (suffix, tail, tail.removeprefix("hook_"), suffix.replace(".hook_", "_")):
            return suffix
    return name
