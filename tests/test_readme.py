"""The README's Python snippets run against a live gRPC server, so the docs cannot drift from
the API.

Every ```python block of README.md runs, in README order and each in a fresh namespace,
against a real server on loopback (tiny random models, a real qdrant-edge store). Its catalog
is a handful of MovieLens-100k films built the way `mmrec demo` builds its catalog
(``movielens_items`` over an ``ml-100k.item`` file, then ``row_to_record``), so the snippets
can name real films (``ml-1`` Toy Story, ``ml-183`` Alien) with their genres and years. The
snippets say ``127.0.0.1:50051``; the test substitutes the port it started. A snippet that
raises fails its test with the README line it starts on, and the traceback points at README
lines. The client module's docstring example runs the same way.
"""

from __future__ import annotations

import re
import textwrap
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import engine.client
from engine.client import MmrecClient
from engine.runtime.engine import Engine
from indexers.catalog import row_to_record
from indexers.datasets import movielens_items
from tests.conftest import ServerThread, make_config
from tests.tiny_models import make_tiny_clip_settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ADDRESS = "127.0.0.1:50051"
"""The address the snippets use; each run points it at the test server."""

FILMS = "\n".join([
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
    "1\tToy Story\t1995\tAnimation Children's Comedy",
    "50\tStar Wars\t1977\tAction Adventure Romance Sci-Fi War",
    "71\tLion King, The\t1994\tAnimation Children's Musical",
    "82\tJurassic Park\t1993\tAction Adventure Sci-Fi",
    "95\tAladdin\t1992\tAnimation Children's Comedy Musical",
    "172\tEmpire Strikes Back, The\t1980\tAction Adventure Drama Romance Sci-Fi War",
    "176\tAliens\t1986\tAction Sci-Fi Thriller War",
    "181\tReturn of the Jedi\t1983\tAction Adventure Romance Sci-Fi War",
    "183\tAlien\t1979\tAction Horror Sci-Fi Thriller",
    "222\tStar Trek: First Contact\t1996\tAction Adventure Sci-Fi",
    "228\tStar Trek: The Wrath of Khan\t1982\tAction Adventure Sci-Fi",
    "258\tContact\t1997\tDrama Sci-Fi",
    "271\tStarship Troopers\t1997\tAction Adventure Sci-Fi War",
    "449\tStar Trek: The Motion Picture\t1979\tAction Adventure Sci-Fi",
]) + "\n"
"""Real rows of MovieLens-100k's ``ml-100k.item`` (RecBole's format), as `make data` unpacks it."""


@dataclass(frozen=True, slots=True)
class Snippet:
    """A code example: its source, the file it is in and the line its code starts on."""

    source: str
    origin: Path
    line: int

    @property
    def where(self) -> str:
        """``README.md line 78``: where a reader finds the snippet."""
        return f"{self.origin.relative_to(ROOT)} line {self.line}"


_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(markdown: str, origin: Path = README) -> list[Snippet]:
    """Every ```python fenced block of a Markdown text, with the line its code starts on."""
    return [Snippet(m.group(1), origin, markdown.count("\n", 0, m.start(1)) + 1)
            for m in _FENCE.finditer(markdown)]


def docstring_example(module_path: Path, docstring: str) -> Snippet:
    """The indented example block at the top of a module docstring (the docstring starts on
    line 1, right after the opening quotes)."""
    lines = docstring.splitlines()
    first = next(i for i, text in enumerate(lines) if text.startswith("    "))
    end = next((i for i in range(first, len(lines))
                if lines[i].strip() and not lines[i].startswith("    ")), len(lines))
    return Snippet(textwrap.dedent("\n".join(lines[first:end])).strip() + "\n", module_path,
                   first + 1)


def run_snippet(snippet: Snippet, target: str) -> None:
    """Execute a snippet against ``target``; fail naming its line if it raises.

    Blank lines are prepended so the compiled code's line numbers are the file's:
    the traceback shows the README's own lines.
    """
    code = "\n" * (snippet.line - 1) + snippet.source.replace(ADDRESS, target)
    try:
        exec(compile(code, str(snippet.origin), "exec"), {"__name__": "__snippet__"})
    except Exception:
        pytest.fail(f"{snippet.where}: the snippet failed against {target}\n"
                    f"{traceback.format_exc()}", pytrace=False)


SNIPPETS = python_blocks(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_text_dir: Path
         ) -> Iterator[ServerThread]:
    """One server on tiny models for every snippet, holding the MovieLens films they name."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "ml-100k.item").write_text(FILMS, encoding="utf-8")
    config = make_config(folder / "store", tiny_text_dir, make_tiny_clip_settings())
    eng = Engine.from_config(config)
    server = ServerThread(eng, config)
    try:
        with MmrecClient(server.target) as client:
            records = [row_to_record(row) for row in movielens_items(folder)]
            report = client.upsert_items((record, None) for record in records)
            assert report.upserted == len(records) and not report.rejected
        yield server
    finally:
        server.stop()
        eng.close()


def test_readme_has_domain_api_snippets() -> None:
    assert len(SNIPPETS) >= 3
    for snippet in SNIPPETS:
        assert ADDRESS in snippet.source, snippet.where
        assert not re.search(r"pb2|protobuf|\bpb\.", snippet.source), (
            f"{snippet.where}: the README's Python speaks the domain API, not protobuf")


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"README-line-{s.line}" for s in SNIPPETS])
def test_readme_snippet_runs(snippet: Snippet, live: ServerThread) -> None:
    run_snippet(snippet, live.target)


def test_client_docstring_example_runs(live: ServerThread) -> None:
    assert engine.client.__doc__ is not None
    example = docstring_example(Path(engine.client.__file__), engine.client.__doc__)
    assert "client.search(" in example.source and ADDRESS in example.source
    run_snippet(example, live.target)


def test_a_failing_snippet_names_its_line() -> None:
    text = "# title\n\nprose\n\n```python\nx = 1\nraise RuntimeError('stale docs')\n```\n"
    (snippet,) = python_blocks(text, ROOT / "EXAMPLE.md")
    assert (snippet.line, snippet.source) == (6, "x = 1\nraise RuntimeError('stale docs')\n")
    with pytest.raises(pytest.fail.Exception, match=r"(?s)^EXAMPLE\.md line 6: .*stale docs"
                       ) as info:
        run_snippet(snippet, "127.0.0.1:1")
    assert 'EXAMPLE.md", line 7' in str(info.value)   # the raising line, as the file numbers it
