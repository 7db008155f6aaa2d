"""The behavioural channel: a SASRec-style sequential recommender and its trained artifact.

    from engine.behaviour.sequential import SequentialSettings, train_sequential, SequentialModel

``train_sequential`` turns user sequences (item ids, oldest first) into a
:class:`SequentialModel`, whose ``item_vectors()`` go into the store's
``behaviour`` named vector and whose ``encode()`` of a user's latest events is
the query vector; Qdrant's cosine ranking then equals the model's dot-product
ranking (see :mod:`engine.behaviour.sequential.artifact`).
"""

from engine.behaviour.sequential.artifact import SequentialModel, TrainingFacts
from engine.behaviour.sequential.model import SasRec
from engine.behaviour.sequential.settings import SequentialSettings
from engine.behaviour.sequential.train import evaluate_next_item, train_sequential

__all__ = [
    "SasRec",
    "SequentialModel",
    "SequentialSettings",
    "TrainingFacts",
    "evaluate_next_item",
    "train_sequential",
]
