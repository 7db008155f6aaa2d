"""The behavioural channel: a SASRec-style sequential recommender and its trained artifact.

    from engine.sequential import SequentialSettings, train_sequential, SequentialModel

``train_sequential`` turns user sequences (item ids, oldest first) into a
:class:`SequentialModel`, whose ``item_vectors()`` go into the store's
``behaviour`` named vector and whose ``encode()`` of a user's latest events is
the query vector; Qdrant's cosine ranking then equals the model's dot-product
ranking (see :mod:`engine.sequential.artifact`).
"""

from engine.sequential.artifact import SequentialModel, TrainingFacts
from engine.sequential.model import SasRec
from engine.sequential.settings import SequentialSettings
from engine.sequential.train import evaluate_next_item, train_sequential

__all__ = [
    "SasRec",
    "SequentialModel",
    "SequentialSettings",
    "TrainingFacts",
    "evaluate_next_item",
    "train_sequential",
]
