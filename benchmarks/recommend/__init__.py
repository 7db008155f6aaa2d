"""Recommendation quality on MovieLens-100k: the leave-one-out protocol and classical baselines.

`protocol` fixes the data, the split and the metrics so every model (baselines, the
sequential model, the engine) is measured the same way; `baselines` holds popularity,
recency-weighted item-kNN and EASE with a validation grid search.
"""
