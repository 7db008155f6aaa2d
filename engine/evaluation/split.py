"""The leave-one-out split: each user's most recent events held out, in time order.

Both places that hold items out call this one function, so "the held-out item"
means the same thing in ``mmrec train-seq``'s early stopping and in the
benchmark protocol; they differ only in the three parameters of
:func:`leave_one_out`, whose docstring says which values each uses and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, NamedTuple, TypeVar

import numpy as np

__all__ = ["Events", "LeftOut", "leave_one_out"]

Events = TypeVar("Events", Sequence[str], np.ndarray)
"""One user's events, oldest first: item ids (a log) or item indices (int64, the benchmarks)."""


class LeftOut(NamedTuple, Generic[Events]):
    """Per user, in input order: what a model may learn from, and the items held out after it.

    ``held_out[u]`` is oldest first (with two: the validation item, then the test
    item) and has the type of the input sequences; it is empty for a user kept whole.
    """

    histories: list[Events]
    held_out: list[Events]


def leave_one_out(sequences: Sequence[Events], *, held_out: int = 2, min_history: int = 1,
                  keep_short: bool = False) -> LeftOut[Events]:
    """Hold out each user's last ``held_out`` events; the events before them are the history.

    A user is split only when at least ``min_history`` events stay in the history,
    i.e. with ``held_out + min_history`` events or more. A shorter user raises
    ``ValueError``, or with ``keep_short`` stays whole (history = every event,
    nothing held out). The two callers differ exactly there:

    - the benchmark protocol (``benchmarks.recommend.protocol``) uses the defaults:
      two held out (the second to last event validates, the last one tests),
      ``min_history=1`` and no ``keep_short``, since every user must be scored at
      both stages; loading MovieLens already drops users with fewer than 5 events,
      so all have the 3 needed;
    - ``mmrec train-seq`` (``engine.behaviour.sequential.train.validation_split``)
      holds out one (validation for early stopping; the served model is refit on
      everything, there is no test stage), with ``min_history=2``, because a
      sequence needs two events to give a training step, and ``keep_short``, because
      a real log has one- and two-event users: they are trained on, not scored.
    """
    if held_out < 1 or min_history < 0:
        raise ValueError(f"held_out must be >= 1 and min_history >= 0, "
                         f"not {held_out} and {min_history}")
    need = held_out + min_history
    short = [u for u, events in enumerate(sequences) if len(events) < need]
    if short and not keep_short:
        raise ValueError(f"{len(short)} users have fewer than {need} interactions, "
                         f"e.g. the one at position {short[0]}")
    histories: list[Events] = []
    left: list[Events] = []
    for events in sequences:
        if len(events) < need:
            histories.append(events)
            left.append(events[len(events):])  # an empty slice of the same type
        else:
            histories.append(events[:-held_out])
            left.append(events[-held_out:])
    return LeftOut(histories, left)
