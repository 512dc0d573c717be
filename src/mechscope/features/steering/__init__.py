"""Steering: directions (SAE latents, CAA, reading vectors, probes, user vectors), interventions
(add, clamp, swap, ablate) at any hook site, generation with them applied, and measured sweeps.

Example:
    >>> from mechscope.features.steering import Clamp, generate
    >>> out = generate(model, "I went to the", [Clamp(sae, 1234, 8.0)], max_new_tokens=20)   # doctest: +SKIP
"""

from mechscope.features.steering.directions import (
    Direction,
    directions_by_layer,
    first_principal_component,
    from_latent,
    from_probe,
    from_vector,
    load_directions,
    mean_difference,
    projection_accuracy,
    read_activations,
    reading_vector,
    save_directions,
)
from mechscope.features.steering.generate import Generation, generate
from mechscope.features.steering.interventions import (
    Ablate,
    Add,
    Clamp,
    Intervention,
    PositionState,
    Swap,
    steering,
    typical_norm,
)

__all__ = [
    "Ablate", "Add", "Clamp", "Direction", "Generation", "directions_by_layer", "Intervention", "PositionState", "Swap",
    "first_principal_component", "from_latent", "from_probe", "from_vector", "generate", "load_directions",
    "mean_difference", "projection_accuracy", "read_activations", "reading_vector", "save_directions", "steering",
    "typical_norm",
]
