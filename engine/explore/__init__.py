"""The explorer: a web page, served by ``mmrec explore``, that shows what the engine does.

It searches (text, an uploaded image when CLIP is on, filters, fusion knobs), draws each
result's explanation (per-channel rank and score, matched words, the LLM's score and reason),
records a user's views, likes and purchases and shows the recommendations change, erases the
user, and shows every request's stage timings and GetInfo. The page's assets are in
``static/`` (plain HTML, CSS and JavaScript: no CDN, no build step); the server
(:mod:`engine.explore.server`) is a thin JSON layer over :class:`engine.client.MmrecClient`
(:mod:`engine.explore.api`), so the page reaches the pipeline only as any client does.
It sits above ``engine.client`` in the layers and never imports protobuf or gRPC.
"""

from engine.explore.api import ExplorerApi, ServiceTarget
from engine.explore.images import ImageRoots
from engine.explore.server import ExplorerServer


def make_explorer(target: ServiceTarget, *, host: str = "127.0.0.1", port: int = 0,
                  images: ImageRoots | None = None) -> ExplorerServer:
    """An explorer for the service at ``target``, bound (not yet serving) to host:port."""
    return ExplorerServer(ExplorerApi(target, images or ImageRoots([])), host=host, port=port)


__all__ = ["ExplorerApi", "ExplorerServer", "ImageRoots", "ServiceTarget", "make_explorer"]
