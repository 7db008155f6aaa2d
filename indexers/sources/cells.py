"""CSV cells as typed values: each column is read as int, float, bool or text.

CSV has no types, so a catalog's ``year`` column would reach the store as the
string ``"1999"`` and a range filter on it would never match. The rule, the one
pandas and pyarrow apply, decided per column over the whole file so every row
of a column (and every resumed run) gets the same type:

- a column whose non-empty cells are all integers is ``int`` (64-bit);
- else, when they are all numbers (integers or decimals, ``1.5``, ``.5``, ``1e3``), ``float``;
- else, when they are all ``true``/``false`` (``True``, ``TRUE``, ``False``, ``FALSE``), ``bool``;
- else text: one cell that is none of these keeps the whole column as strings.

An empty cell is missing (its key is left out of the row) and does not vote. Two
exceptions keep data intact where pandas would not: a cell that would lose
characters as a number (a leading zero, ``007``, ``01.5``; an integer beyond 64
bits) keeps its column as text, and so do ``NaN``, ``inf`` and ``NA``, which are
read as words, not as missing or infinite numbers. The columns the row validator
reads as strings (``id``, ``tenant``, ``title``, ``text``, ``image``) are never
converted: ids stay strings always. A schema (``--column-type year=int``) forces
a column's type instead; a cell it cannot convert dead-letters its row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from engine.domain import InvalidInput
from indexers.catalog import RESERVED

COLUMN_TYPES = ("int", "float", "bool", "str")
TEXT_COLUMNS = frozenset(RESERVED)
"""Columns the row validator reads as strings; never converted."""

_INT64 = (-(2**63), 2**63 - 1)
_PLAIN_INT = re.compile(r"[+-]?(?:0|[1-9][0-9]*)")
_PLAIN_FLOAT = re.compile(r"[+-]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ANY_INT = re.compile(r"[+-]?[0-9]+")
_ANY_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False,
          "FALSE": False}
_FORCED_BOOLS = {"true": True, "1": True, "false": False, "0": False}
_NUMERIC = frozenset({"int", "float", "bool"})


def check_schema(schema: Mapping[str, str]) -> dict[str, str]:
    """A forced schema, checked: known type names, and no column that must stay text."""
    for name, kind in schema.items():
        if kind not in COLUMN_TYPES:
            raise InvalidInput(f"column type {kind!r} for {name!r} is not one of "
                               f"{', '.join(COLUMN_TYPES)}")
        if name in TEXT_COLUMNS and kind != "str":
            raise InvalidInput(f"column {name!r} is always read as text; it cannot be {kind}")
    return dict(schema)


def _cell_kinds(cell: str) -> frozenset[str]:
    """The types a non-empty cell can be read as without losing a character."""
    if _PLAIN_INT.fullmatch(cell):
        return frozenset({"int", "float"}) if _INT64[0] <= int(cell) <= _INT64[1] \
            else frozenset()
    if _PLAIN_FLOAT.fullmatch(cell) and math.isfinite(float(cell)):
        return frozenset({"float"})
    return frozenset({"bool"}) if cell in _BOOLS else frozenset()


def infer_types(rows: Iterable[Mapping[str, str]], schema: Mapping[str, str]) -> dict[str, str]:
    """Each column's type over all ``rows`` (their non-empty cells by name): the schema's
    where it names the column, else the rule in this module's docstring. Columns left out
    are text."""
    possible: dict[str, set[str]] = {}
    for cells in rows:
        for name, cell in cells.items():
            kinds = possible.get(name)
            if kinds is None:
                if name in TEXT_COLUMNS or name in schema:
                    continue
                kinds = possible[name] = set(_NUMERIC)
            if kinds:
                kinds &= _cell_kinds(cell)
    inferred = {name: next((k for k in ("int", "float", "bool") if k in kinds), "str")
                for name, kinds in possible.items()}
    return {**inferred, **schema}


def convert(cell: str, kind: str) -> Any:
    """``cell`` read as ``kind``; ValueError when it is not one (a forced type's bad cell)."""
    if kind == "str":
        return cell
    if kind == "int" and _ANY_INT.fullmatch(cell) and _INT64[0] <= int(cell) <= _INT64[1]:
        return int(cell)
    if kind == "float" and _ANY_FLOAT.fullmatch(cell) and math.isfinite(float(cell)):
        return float(cell)
    if kind == "bool" and cell.lower() in _FORCED_BOOLS:
        return _FORCED_BOOLS[cell.lower()]
    raise ValueError(f"{cell[:40]!r} is not {'an' if kind == 'int' else 'a'} {kind}")
