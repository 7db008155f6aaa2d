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
    """One explanation in a line: per-channel ranks, fused and LLM standing, matched words,
    the history items behind it by title and id, and the reason with who wrote it."""
    parts = [f"{name} #{c.rank} ({c.score:.2f})" for name, c in e.channels.items()]
    parts.append(f"hybrid #{e.fused_rank}")
    if e.rerank_score is not None:
        parts.append(f"LLM {e.rerank_score:+.2f}")
    if e.matched_terms:
        parts.append("words: " + ", ".join(e.matched_terms))
    if e.because_of:
        titles = [*e.because_of_titles, *[""] * (len(e.because_of) - len(e.because_of_titles))]
        parts.append("because of: " + ", ".join(
            f"{title} ({item})" if title else item
            for item, title in zip(e.because_of, titles, strict=False)))
    if e.shared_attributes:
        parts.append("shares: " + ", ".join(e.shared_attributes))
    text = "; ".join(parts)
    if not e.reason:
        return text
    source = {"llm": " [LLM]", "facts": " [facts]"}.get(e.reason_source, "")
    if e.reason_rejected == "no_time":
        source = " [facts; no time left for the LLM]"
    elif e.reason_rejected:
        source = f" [facts; the LLM's sentence was rejected: {e.reason_rejected}]"
    return f"{text}. {e.reason}{source}"


def print_info(out: Console, details: EngineInfo) -> None:
    """Models, channels and counts of a service."""
    out.print(f"mmrec {details.version} on {details.device}; store: {details.store}; "
              f"{details.item_count} items")
    for model in details.models:
        state = "[green]loaded[/]" if model.loaded else f"[yellow]off[/] ({model.reason})"
        out.print(f"  model {model.role}: {model.name}: {state}")
        for key, value in sorted(model.details.items()):
            out.print(f"    {key}: {value}", highlight=False, markup=False)
    for channel in details.channels:
        state = "on" if channel.enabled else "off"
        size = f"{channel.dim}-d" if channel.dim else "sparse"
        out.print(f"  channel {channel.name}: {size}, weight {channel.weight:g}, {state}")
