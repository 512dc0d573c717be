"""A tiny random model with a word-level tokenizer, for runnable documentation examples.

Example:
    >>> model = tiny_model()
    >>> model.cfg.n_layers, model.cfg.d_model, model.to_str_tokens("the cat sat")
    (2, 16, ['the', 'cat', 'sat'])
"""

from __future__ import annotations

import torch

from mechscope.core.hooked import HookedModel

WORDS = "<s> the cat sat on a mat dog ran".split()


def tiny_model(seed: int = 0, vocab_size: int = len(WORDS)) -> HookedModel:
    """A 2-layer random Llama (width 16, 2 heads, 1 key/value head) over the nine words of `WORDS`.

    `vocab_size` above nine widens the embedding for examples that feed raw token ids (the
    tokenizer still knows only `WORDS`).

    Seeds torch's global generator with `seed` before building the weights, so an example's later
    random draws are reproducible too.

    Example:
        >>> logits = tiny_model()(tiny_model().to_tokens("the cat sat on a"))
        >>> logits.shape
        torch.Size([1, 5, 9])
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<s>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<s>", pad_token="<s>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1)
    return HookedModel(LlamaForCausalLM(cfg), tokenizer, name="tiny")
