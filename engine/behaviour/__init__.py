"""What is learned from the interaction log: SASRec, co-occurrence, the MIPS transform.

    interaction log -> mmrec train-seq -> behaviour.sequential (SASRec) + behaviour.cooccurrence
                    -> item vectors in the store's ``behaviour`` / ``cooccurrence`` named vectors
    user history    -> model.encode(...) -> the query vector of that channel

Every model satisfies :class:`BehaviourModel`; each is trained on, saved for and served to one
tenant (:class:`ServedModels`).
"""

from engine.behaviour.base import BehaviourModel
from engine.behaviour.cooccurrence import CooccurrenceModel
from engine.behaviour.served import ServedModel, ServedModels

__all__ = ["BehaviourModel", "CooccurrenceModel", "ServedModel", "ServedModels"]
