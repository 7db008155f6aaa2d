"""Catalog builders for the demo data sets, on small files in the same formats."""

from __future__ import annotations

from pathlib import Path

from indexers.datasets import movielens_items, tuxpaint_items, write_jsonl
from tests.conftest import png_bytes


def test_movielens_items(tmp_path: Path) -> None:
    (tmp_path / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n"
        "267\tunknown\t\tUnknown\n")
    rows = list(movielens_items(tmp_path))
    assert rows[0]["id"] == "ml-1" and rows[0]["title"] == "Toy Story"
    assert rows[0]["year"] == 1995 and rows[0]["genres"] == ["Animation", "Children's", "Comedy"]
    assert "Animation, Children's, Comedy" in rows[0]["text"]
    assert rows[1]["year"] is None and rows[1]["text"] == "A film. Genres: Unknown."


def test_tuxpaint_items(tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    (stamps / "animals" / "cats").mkdir(parents=True)
    (stamps / "animals" / "cats" / "lion.txt").write_text("A lion.\nfr.utf8=Un lion.\n")
    (stamps / "animals" / "cats" / "lion.png").write_bytes(png_bytes(0))
    (stamps / "food").mkdir()
    (stamps / "food" / "pie.txt").write_text("A pie.\n")
    (stamps / "food" / "pie.svg").write_text("<svg/>")
    (stamps / "food" / "blank.txt").write_text("")
    rows = list(tuxpaint_items(stamps))
    assert [(r["id"], r["title"], r["category"], r["subcategory"], bool(r["image"]))
            for r in rows] == [("tux-animals/cats/lion", "A lion", "animals", "cats", True),
                               ("tux-food/pie", "A pie", "food", "", False)]
    assert write_jsonl(iter(rows), tmp_path / "out" / "c.jsonl") == 2
