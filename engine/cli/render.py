"""How the CLI and the demo print things: result tables, explanations, info.

The indexing job's summary is printed by ``indexers.command.print_summary``.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from engine.domain import EngineInfo, Explanation, RecommendResult, SearchResult


def print_results(out: Console, label: str, result: SearchResult | RecommendResult) -> None:
    """A readable table of search or recommend results, with the reasons when asked for."""
    how = f"channels: {', '.join(result.channels)}; {result.fusion}"
    if getattr(result, "cold_start", False):
        how += "; cold start"
    if result.reranked:
        how += f"; LLM re-ranked {result.reranked}"
        how += " (budget ran out)" if result.budget_exhausted else ""
    table = Table(title=f"{label}  [dim]({how})[/]", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("id", overflow="fold")
    table.add_column("title")
    table.add_column("details", overflow="fold")
    if result.explanations is not None:
        table.add_column("why", overflow="fold")
    for rank, hit in enumerate(result.hits, start=1):
        attrs = hit.record.attributes
        if "genres" in attrs:  # a film
            details = f"{attrs.get('year') or ''} {', '.join(attrs['genres'])}".strip()
        elif "category" in attrs:  # a stamp
            details = "/".join(filter(None, (attrs["category"], attrs.get("subcategory"))))
        else:
            details = hit.record.text
        row = [str(rank), f"{hit.score:.3f}", hit.record.id, hit.record.title, details]
        if result.explanations is not None:
            row.append(why(result.explanations[rank - 1]))
        table.add_row(*row)
    out.print(table)


def why(e: Explanation) -> str:
    """One explanation in a line: per-channel ranks, fused and LLM standing, matched words."""
    parts = [f"{name} #{c.rank} ({c.score:.2f})" for name, c in e.channels.items()]
    parts.append(f"hybrid #{e.fused_rank}")
    if e.rerank_score is not None:
        parts.append(f"LLM {e.rerank_score:+.2f}")
    if e.matched_terms:
        parts.append("words: " + ", ".join(e.matched_terms))
    if e.because_of:
        parts.append("because of: " + ", ".join(e.because_of))
    text = "; ".join(parts)
    return f"{text}. {e.reason}" if e.reason else text


def print_info(out: Console, details: EngineInfo) -> None:
    """Models, channels and counts of a service."""
    out.print(f"mmrec {details.version} on {details.device}; store: {details.store}; "
              f"{details.item_count} items")
    for model in details.models:
        state = "[green]loaded[/]" if model.loaded else f"[yellow]off[/] ({model.reason})"
        out.print(f"  model {model.role}: {model.name}: {state}")
    for channel in details.channels:
        state = "on" if channel.enabled else "off"
        size = f"{channel.dim}-d" if channel.dim else "sparse"
        out.print(f"  channel {channel.name}: {size}, weight {channel.weight:g}, {state}")
