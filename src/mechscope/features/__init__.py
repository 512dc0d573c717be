"""features layer of mechscope: what each latent of a dictionary means.

`collect_features` fills one SQLite feature database per dictionary (examples, statistics,
logit effects, neighbours); `FeatureDatabase` reads and annotates it; autointerp
(`mechscope.features.autointerp`) writes and scores explanations; `features.universality`
matches the latents of two dictionaries; `features.export` reads and writes Neuronpedia JSON.

Example:
    >>> from mechscope.features import FeatureDatabase
    >>> FeatureDatabase.open("out/features.db").latent(0)["density"]   # doctest: +SKIP
    0.0012
"""

from mechscope.features.accumulate import CollectConfig
from mechscope.features.collect import collect_features, encode_contexts, encode_contexts_sparse
from mechscope.features.database import SCHEMA_VERSION, FeatureDatabase, FeatureDatabaseError

__all__ = ["SCHEMA_VERSION", "CollectConfig", "FeatureDatabase", "FeatureDatabaseError", "collect_features",
           "encode_contexts", "encode_contexts_sparse"]
