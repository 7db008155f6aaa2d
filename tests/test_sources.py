"""Catalog readers: one set of fields from every format, stable positions, bad rows never stop."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import gzip
import io
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.domain import InvalidInput, NotFound
from indexers.sources import MAX_RAW_CHARS, CatalogSource, SourceRow, open_source
from tests.conftest import png_bytes

FORMATS = ["jsonl", "csv", "tsv", "parquet", "folder"]


def expected_items(root: Path) -> list[dict[str, Any]]:
    """The catalog every format below describes (folder ids are relative paths)."""
    image = lambda key: str(root / "images" / f"{key}.png")  # noqa: E731
    return [
        {"id": "fruit/apple", "image": image("fruit/apple"), "category": "fruit",
         "title": "Apple", "text": "Red fruit"},
        {"id": "fruit/banana", "image": image("fruit/banana"), "category": "fruit",
         "title": "Banana", "colour": "yellow"},
        {"id": "nuts/cashew", "image": image("nuts/cashew"), "category": "nuts"},
        {"id": "plain", "image": image("plain"), "title": "Plain",
         "text": "line one\nline two, \"quoted\""},
        {"id": "zebra", "image": image("zebra")},
    ]


def write_folder(root: Path) -> Path:
    folder = root / "images"
    for key in ("fruit/apple", "fruit/banana", "nuts/cashew", "plain", "zebra"):
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / f"{key}.png").write_bytes(png_bytes(len(key)))
    (folder / "fruit" / "apple.txt").write_text("Apple\nRed fruit\n")
    (folder / "fruit" / "banana.json").write_text('{"title": "Banana", "colour": "yellow"}')
    (folder / "plain.txt").write_text('Plain\nline one\nline two, "quoted"')
    return folder


def write_catalog(root: Path, fmt: str) -> Path:
    """The expected catalog written in ``fmt`` (parquet: row groups of 2 rows)."""
    items = expected_items(root)
    columns = ["id", "image", "category", "title", "text", "colour"]
    if fmt == "folder":
        return write_folder(root)
    if fmt == "jsonl":
        path = root / "catalog.jsonl"
        path.write_text("".join(json.dumps(item) + "\n" for item in items))
    elif fmt in ("csv", "tsv"):
        path = root / f"catalog.{fmt}"
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, delimiter="," if fmt == "csv" else "\t")
        writer.writeheader()
        writer.writerows(items)
        path.write_text(buf.getvalue(), newline="")
    else:
        path = root / "catalog.parquet"
        table = pa.table({column: [item.get(column) for item in items] for column in columns})
        pq.write_table(table, path, row_group_size=2)
    return path


def fields_of(rows: list[SourceRow]) -> list[dict[str, Any] | None]:
    return [row.fields for row in rows]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_yields_the_same_rows(tmp_path: Path, fmt: str) -> None:
    source = open_source(write_catalog(tmp_path, fmt))
    rows = list(source.rows())
    assert source.format == ("csv" if fmt == "tsv" else fmt)
    assert fields_of(rows) == expected_items(tmp_path)
    assert [row.position for row in rows] == [1, 2, 3, 4, 5]
    assert all(row.error == "" for row in rows)
    assert source.estimate_rows() == (6 if fmt in ("csv", "tsv") else 5)  # a cell spans 2 lines


@pytest.mark.parametrize("fmt", FORMATS)
def test_rows_after_a_position_are_exactly_the_rest(tmp_path: Path, fmt: str) -> None:
    source = open_source(write_catalog(tmp_path, fmt))
    everything = list(source.rows())
    for start_after in range(7):
        assert list(source.rows(start_after)) == everything[start_after:], start_after
    with pytest.raises(InvalidInput, match="0 or more"):
        next(iter(source.rows(-1)))


def test_parquet_resume_skips_whole_row_groups(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    source = open_source(write_catalog(tmp_path, "parquet"))
    groups: list[list[int]] = []
    real = pq.ParquetFile.iter_batches

    def spy(self: pq.ParquetFile, *args: Any, **kwargs: Any) -> Any:
        groups.append(kwargs["row_groups"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert [row.position for row in source.rows(3)] == [4, 5]
    assert groups == [[1], [2]]


def test_jsonl_bad_rows_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.ndjson"
    path.write_bytes(b'\xef\xbb\xbf{"id": "bom"}\n{"id": "bad\xff"}\n{not json\n\n  \n[1, 2]\n'
                     b'{"id": "last"}')
    source = open_source(path)
    rows = list(source.rows())
    assert [row.position for row in rows] == [1, 2, 3, 6, 7]
    assert rows[0].fields == {"id": "bom"} and rows[4].fields == {"id": "last"}
    bad = {row.position: row for row in rows if row.fields is None}
    assert bad[2].error.startswith("not valid UTF-8: byte 0xff at byte 12")
    assert bad[2].raw == '{"id": "bad\ufffd"}'
    assert bad[3].error.startswith("not valid JSON: ") and bad[3].raw == "{not json"
    assert bad[6].error == "a row must be a JSON object"
    assert [row.position for row in source.rows(3)] == [6, 7]
    assert source.estimate_rows() == 7


def test_raw_text_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "' + "x" * 30_000 + "\n")
    [row] = open_source(path).rows()
    assert row.fields is None and len(row.raw) == MAX_RAW_CHARS


def test_gzipped_jsonl(tmp_path: Path) -> None:
    plain = write_catalog(tmp_path, "jsonl")
    path = tmp_path / "catalog.jsonl.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    source = open_source(path)
    assert fields_of(list(source.rows(2))) == expected_items(tmp_path)[2:]
    assert source.estimate_rows() is None
    path.write_bytes(gzip.compress(plain.read_bytes())[:-30])
    with pytest.raises(InvalidInput, match="could not be read to the end"):
        list(open_source(path).rows())


def test_csv_bad_rows_stay_single_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(b"\xef\xbb\xbfid,title,,colour\r\n"
                     b"a,Apple,index,red\r\n"
                     b'b,"Ba\xffnana\r\nsplit",1,\r\n'
                     b"c,Cherry,2,dark,extra\r\n"
                     b"\r\n"
                     b"d,,3\r\n"
                     b'e,"Elder ""tree"""\r\n')
    rows = list(open_source(path).rows())
    assert [row.position for row in rows] == [1, 2, 3, 5, 6]
    assert rows[0].fields == {"id": "a", "title": "Apple", "colour": "red"}
    assert rows[1].fields is None and rows[1].error.startswith("not valid UTF-8: byte 0xff")
    assert rows[1].raw == 'b,"Ba\ufffdnana\r\nsplit",1,'
    assert rows[2].fields is None
    assert rows[2].error == ("row has 5 cells but the header has 4 columns; "
                             "quote cells that contain ','")
    assert rows[3].fields == {"id": "d"}
    assert rows[4].fields == {"id": "e", "title": 'Elder "tree"'}


def test_csv_header_problems_refuse_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(b"id,ti\xfftle\na,b\n")
    with pytest.raises(InvalidInput, match=r"header .* not valid UTF-8"):
        list(open_source(path).rows())
    path.write_bytes(b"id,title,id\na,b,c\n")
    with pytest.raises(InvalidInput, match="more than once: id"):
        list(open_source(path).rows())
    path.write_bytes(b"")
    assert list(open_source(path).rows()) == []


def test_parquet_values_become_plain_python(tmp_path: Path) -> None:
    path = tmp_path / "c.pq"
    table = pa.table({
        "id": pa.array([1, 2], pa.int64()),
        "title": ["One", None],
        "price": pa.array([decimal.Decimal("9.50"), None], pa.decimal128(5, 2)),
        "added": pa.array([dt.datetime(2024, 5, 1, 12, 0), None], pa.timestamp("s")),
        "tags": [["a", "b"], []],
        "dims": [{"w": 1.5, "h": None}, None],
        "extra": pa.array([[("k", "v")], None], pa.map_(pa.string(), pa.string())),
    })
    pq.write_table(table, path)
    rows = list(open_source(path).rows())
    assert fields_of(rows) == [
        {"id": 1, "title": "One", "price": 9.5, "added": "2024-05-01T12:00:00",
         "tags": ["a", "b"], "dims": {"w": 1.5, "h": None}, "extra": {"k": "v"}},
        {"id": 2, "tags": []},
    ]
    assert json.loads(rows[1].raw) == {"id": 2, "tags": []}


def test_parquet_unreadable_row_group_becomes_error_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    table = pa.Table.from_pylist([{"id": str(i), "title": "t" * 50} for i in range(6)])
    pq.write_table(table, path, row_group_size=2, write_page_checksum=True, compression="none")
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(1)
    data = bytearray(path.read_bytes())
    data[chunk.data_page_offset + chunk.total_compressed_size - 80] ^= 0xFF
    path.write_bytes(bytes(data))
    rows = list(open_source(path).rows())
    assert [row.position for row in rows] == [1, 2, 3, 4, 5, 6]
    assert [row.fields and row.fields["id"] for row in rows] == ["0", "1", None, None, "4", "5"]
    assert rows[2].error.startswith("row group 2 of the Parquet file could not be read")
    assert [row.position for row in open_source(path).rows(3)] == [4, 5, 6]


def test_folder_bad_entries(tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    (folder / "shoes").mkdir(parents=True)
    (folder / ".cache").mkdir()
    for name in ("a.png", "b.JPG", "c.webp", "d.gif", "d.bmp", "shoes/e.jpeg", ".cache/x.png",
                 ".hidden.png"):
        (folder / name).write_bytes(b"not decoded here")
    (folder / "a.txt").write_bytes(b"Caf\xe9\n")
    (folder / "b.json").write_text("{oops")
    (folder / "c.json").write_text("[1]")
    (folder / "shoes" / "e.json").write_text('{"id": "sku-9", "image": "x", "size": 42}')
    (folder / "shoes" / "e.txt").write_text("Boot\n\nWarm\n")
    (folder / "orphan.txt").write_text("no image")
    (folder / "notes.md").write_text("ignored")
    (folder / "gone.png").symlink_to(folder / "nowhere.png")
    source = open_source(folder)
    rows = list(source.rows())
    assert [row.position for row in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[4].fields == {"id": "gone", "image": str(folder / "gone.png")}
    errors = [row.error for row in rows[:4]]
    assert errors[0] == "caption a.txt is not valid UTF-8 (byte 0xe9 at byte 4); save it as UTF-8"
    assert errors[1].startswith("caption b.json is not valid JSON")
    assert errors[2] == "caption c.json must hold a JSON object"
    assert errors[3] == "2 images share the id 'd' (d.bmp, d.gif); rename all but one"
    assert json.loads(rows[3].raw) == {"id": "d", "files": ["d.bmp", "d.gif"]}
    assert rows[5].fields == {"id": "sku-9", "image": str(folder / "shoes" / "e.jpeg"),
                              "category": "shoes", "title": "Boot", "text": "Warm", "size": 42}
    assert source.estimate_rows() == 6


@pytest.mark.parametrize("fmt", FORMATS)
def test_fingerprint_changes_with_the_source(tmp_path: Path, fmt: str) -> None:
    path = write_catalog(tmp_path, fmt)
    source = open_source(path)
    before = source.fingerprint()
    assert before == open_source(path).fingerprint()
    assert str(path.absolute()) in before
    target = path / "plain.txt" if fmt == "folder" else path
    stat = target.stat()
    later = stat.st_mtime_ns + 1_000_000
    os.utime(target, ns=(stat.st_atime_ns, later))  # same size, newer
    touched = source.fingerprint()
    assert touched != before
    if fmt == "folder":  # one more entry, yet no newer mtime anywhere
        (path / "new.png").write_bytes(b"x")
        os.utime(path / "new.png", ns=(0, 0))
        os.utime(path, ns=(0, 0))
    else:  # one more byte, same mtime
        with target.open("ab") as fh:
            fh.write(b"\n")
        os.utime(target, ns=(stat.st_atime_ns, later))
    assert source.fingerprint() not in (before, touched)


@pytest.mark.parametrize(("name", "fmt"), [
    ("c.jsonl", "jsonl"), ("c.NDJSON", "jsonl"), ("c.json", "jsonl"), ("c.jsonl.gz", "jsonl"),
    ("c.csv", "csv"), ("c.tsv.gz", "csv"), ("c.parquet", "parquet"), ("c.pq", "parquet"),
])
def test_open_source_picks_the_format(tmp_path: Path, name: str, fmt: str) -> None:
    path = tmp_path / name
    if fmt == "parquet":
        pq.write_table(pa.table({"id": ["a"]}), path)
    else:
        data = b'{"id": "a"}\n' if fmt == "jsonl" else b"id\na\n"
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    source: CatalogSource = open_source(path)
    assert source.format == fmt
    assert source.base_dir == tmp_path
    assert fields_of(list(source.rows())) == [{"id": "a"}]


def test_open_source_refusals(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        open_source(tmp_path / "none.jsonl")
    odd = tmp_path / "c.xlsx"
    odd.write_bytes(b"id\na\n")
    with pytest.raises(InvalidInput, match=r"accepted: \.jsonl, .*\.parquet.*folder"):
        open_source(odd)
    assert open_source(odd, format="tsv").format == "csv"
    with pytest.raises(InvalidInput, match="unknown catalog format 'xml'"):
        open_source(odd, format="xml")
    with pytest.raises(InvalidInput, match="cannot be read as folder"):
        open_source(odd, format="folder")
    with pytest.raises(InvalidInput, match="cannot be read as jsonl"):
        open_source(tmp_path, format="jsonl")
    with pytest.raises(InvalidInput, match="not a readable Parquet file"):
        open_source(odd, format="parquet")
    array = tmp_path / "c.json"
    array.write_text('\n [{"id": "a"}]')
    with pytest.raises(InvalidInput, match="holds a JSON array"):
        open_source(array)
