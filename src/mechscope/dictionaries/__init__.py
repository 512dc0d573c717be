"""dictionaries layer of mechscope: sparse autoencoders and transcoders, their training and files.

Architectures (registry key -> class): `relu` (ReLU + L1), `topk`, `batchtopk`, `jumprelu`,
`gated`, and `clt` (cross-layer transcoder). Any of them is a transcoder when `d_out != d_in` (or `hook_name_out` is set).
Training: `Trainer` / `TrainerConfig`; files: `save_dictionary` / `load_dictionary` (SAELens
layout); ground truth: `run_synthetic`.

Example:
    >>> import torch
    >>> from mechscope.dictionaries import make_dictionary
    >>> sae = make_dictionary("relu", d_in=16, d_sae=64, seed=0)
    >>> sae.encode(torch.randn(3, 16)).shape
    torch.Size([3, 64])
"""

from mechscope.dictionaries.base import (
    Dictionary,
    DictionaryConfig,
    DictionaryOutput,
    SparseCodes,
    available_architectures,
    dictionary_class,
    dictionary_from_config,
    make_dictionary,
)
from mechscope.dictionaries.batchtopk import BatchTopKSAE, BatchTopKSAEConfig
from mechscope.dictionaries.clt import CrossLayerTranscoder
from mechscope.dictionaries.errors import CheckpointError, DictionaryConfigError, DictionaryFormatError
from mechscope.dictionaries.formats import load_dictionary, save_dictionary
from mechscope.dictionaries.gated import GatedSAE, GatedSAEConfig
from mechscope.dictionaries.jumprelu import JumpReLUSAE, JumpReLUSAEConfig
from mechscope.dictionaries.relu import ReluSAE, ReluSAEConfig
from mechscope.dictionaries.synthetic import SyntheticData, run_synthetic
from mechscope.dictionaries.topk import TopKSAE, TopKSAEConfig
from mechscope.dictionaries.trainer import Trainer, TrainerConfig, TrainResult

__all__ = [
    "BatchTopKSAE", "BatchTopKSAEConfig", "CheckpointError", "CrossLayerTranscoder", "Dictionary", "DictionaryConfig",
    "DictionaryConfigError", "DictionaryFormatError", "DictionaryOutput", "GatedSAE", "GatedSAEConfig",
    "JumpReLUSAE", "JumpReLUSAEConfig", "ReluSAE", "ReluSAEConfig", "SparseCodes", "SyntheticData", "TopKSAE",
    "TopKSAEConfig", "TrainResult", "Trainer", "TrainerConfig", "available_architectures", "dictionary_class",
    "dictionary_from_config", "load_dictionary", "make_dictionary", "run_synthetic", "save_dictionary",
]
