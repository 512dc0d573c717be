"""The toy model type is registered on demand: `import mechscope` imports no toy, loading a toy folder does."""

from __future__ import annotations

import subprocess
import sys

import torch

from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM
from mechscope.toys.induction import toy_tokenizer

SCRIPT = """
import sys
import mechscope
assert "mechscope.toys.attn_only" not in sys.modules, "the package root imports a toy"
model = mechscope.load_model(sys.argv[1])
print(model.cfg.family, model.cfg.n_layers, "mechscope.toys.attn_only" in sys.modules)
"""


def test_toy_folder_loads_in_a_fresh_interpreter(tmp_path) -> None:
    torch.manual_seed(0)
    AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=17, hidden_size=32, num_attention_heads=4)).save_pretrained(tmp_path)
    toy_tokenizer(16).save_pretrained(tmp_path)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["attn_only", "2", "True"]
