"""The explorer's JSON API: each endpoint is one or two calls of the Python client.

There is no second way into the pipeline: every search, recommendation, event, erasure and
info request goes through :class:`engine.client.MmrecClient` to the running service, which
authenticates, validates, admits and answers as it does for any client. The service's
domain errors pass through unchanged (the HTTP layer turns them into readable messages).

API keys: the explorer has the key it was started with (``mmrec explore --api-key`` or
``MMREC_API_KEY``) and forwards it on every call; a page may send its own in the
``Authorization: Bearer KEY`` header, which then replaces it for that request. One client
(one gRPC channel) is kept per key, the least recently used closed beyond a few.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.client import MmrecClient
from engine.domain import DEFAULT_TENANT, Event, InvalidInput, MmrecError
from engine.explore import forms, views
from engine.explore.history import CatalogSample, LoggedEvent, SessionLog
from engine.explore.images import ImageRoots, Thumbnail, placeholder

EVENT_KINDS = ("view", "like", "purchase")
"""The events the page records with a click (the service accepts more; see [profiles])."""
MAX_CLIENTS = 8


@dataclass(frozen=True, slots=True)
class ServiceTarget:
    """Where the service is and how to reach it: address, default key, TLS roots, timeout."""

    address: str
    api_key: str | None = None
    tls_ca: Path | None = None
    timeout: float = 60.0


class ClientPool:
    """One ``MmrecClient`` per API key in use, so each key's calls share a channel."""

    def __init__(self, target: ServiceTarget) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._clients: OrderedDict[str | None, MmrecClient] = OrderedDict()

    def get(self, api_key: str | None) -> MmrecClient:
        """The client for ``api_key`` (None: the explorer's own key)."""
        key = api_key or self.target.api_key
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = MmrecClient(self.target.address, timeout=self.target.timeout,
                                     api_key=key, root_certificates=self.target.tls_ca)
                self._clients[key] = client
            self._clients.move_to_end(key)
            while len(self._clients) > MAX_CLIENTS:
                self._clients.popitem(last=False)[1].close()
            return client

    def close(self) -> None:
        """Close every channel."""
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


class ExplorerApi:
    """The endpoints, as methods from a JSON body (and the caller's key) to a JSON answer."""

    def __init__(self, target: ServiceTarget, images: ImageRoots) -> None:
        self.clients = ClientPool(target)
        self.images = images
        self.catalog = CatalogSample()
        self.log = SessionLog()

    def info(self, key: str | None) -> dict[str, Any]:
        """GetInfo, plus what the page needs to know at once: whether images can be searched."""
        details = self.clients.get(key).info()
        clip = next((m for m in details.models if m.role == "clip"), None)
        answer = views.info(details)
        answer["image_search"] = {
            "on": bool(clip and clip.loaded),
            "reason": "" if clip and clip.loaded else (
                f"the CLIP model is off: {clip.reason}" if clip else "no CLIP model configured"),
        }
        answer["service"] = self.clients.target.address
        answer["event_kinds"] = list(EVENT_KINDS)
        return answer

    def search(self, body: dict[str, Any], key: str | None) -> dict[str, Any]:
        """Search by text and/or an uploaded image, explained, with the page's knobs."""
        text, image = forms.text(body, "text"), forms.image(body)
        if not text and image is None:
            raise InvalidInput("type something to search for, or choose an image")
        started = time.perf_counter()
        result = self.clients.get(key).search(text=text, image=image, **forms.shared(body))
        took = (time.perf_counter() - started) * 1000
        self.catalog.observe(hit.record for hit in result.hits)
        return views.search_result(result, took)

    def recommend(self, body: dict[str, Any], key: str | None) -> dict[str, Any]:
        """Recommendations for a user (and optional context text), explained."""
        user_id = forms.text(body, "user_id")
        if not user_id:
            raise InvalidInput("pick or create a user first")
        started = time.perf_counter()
        result = self.clients.get(key).recommend(
            user_id=user_id, context=forms.text(body, "context"),
            include_seen=forms.flag(body, "include_seen"), **forms.shared(body))
        took = (time.perf_counter() - started) * 1000
        self.catalog.observe(hit.record for hit in result.hits)
        return views.recommend_result(result, took)

    def record(self, body: dict[str, Any], key: str | None) -> dict[str, Any]:
        """Record one event (a view, like or purchase of an item) for a user."""
        user_id, item_id = forms.text(body, "user_id"), forms.text(body, "item_id")
        kind, tenant = forms.text(body, "kind"), forms.text(body, "tenant")
        if not user_id or not item_id:
            raise InvalidInput("an event needs a user and an item")
        if kind not in EVENT_KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(EVENT_KINDS)}, not {kind!r}")
        now = time.time()
        event = Event(user_id, item_id, kind, 0.0, now, tenant or DEFAULT_TENANT)
        started = time.perf_counter()
        report = self.clients.get(key).record_events([event])
        took = (time.perf_counter() - started) * 1000
        if report.rejected:
            raise InvalidInput(f"the service refused the event: {report.rejected[0][1]}")
        seen = self.catalog.item(event.tenant, item_id)
        self.log.add(event.tenant, user_id,
                     LoggedEvent(item_id, seen.title if seen else item_id, kind, now))
        return {"recorded": report.recorded, "round_trip_ms": round(took, 2),
                "events": views.events(self.log.events(event.tenant, user_id))}

    def user(self, query: dict[str, str]) -> dict[str, Any]:
        """A user's events recorded through this explorer, and the users it knows."""
        tenant = query.get("tenant") or DEFAULT_TENANT
        user_id = query.get("user_id", "")
        return {"user_id": user_id, "events": views.events(self.log.events(tenant, user_id)),
                "known_users": self.log.users(tenant)}

    def erase(self, body: dict[str, Any], key: str | None) -> dict[str, Any]:
        """DeleteUser: everything the service stored about the user, and what it removed."""
        user_id, tenant = forms.text(body, "user_id"), forms.text(body, "tenant")
        if not user_id:
            raise InvalidInput("pick a user to erase")
        erased = self.clients.get(key).delete_user(user_id, tenant=tenant)
        logged = self.log.forget(tenant or DEFAULT_TENANT, user_id)
        return views.erasure(erased, logged)

    def facets(self, query: dict[str, str]) -> dict[str, Any]:
        """The filter chips and ranges the explorer has seen in this tenant's items."""
        return self.catalog.facets(query.get("tenant") or DEFAULT_TENANT)

    def thumbnail(self, query: dict[str, str], key: str | None) -> Thumbnail:
        """An item's image from the configured image roots, or a placeholder saying why not."""
        tenant = query.get("tenant") or DEFAULT_TENANT
        item_id = query.get("id", "")
        seen = self.catalog.item(tenant, item_id)
        if seen is None:
            try:
                records = self.clients.get(key).get_items([item_id], tenant=tenant)
            except MmrecError as exc:
                return placeholder(item_id, f"{exc.status or type(exc).__name__}: {exc}")
            self.catalog.observe(records)
            seen = self.catalog.item(tenant, item_id)
        if seen is None:
            return placeholder(item_id, "unknown item")
        return self.images.thumbnail(seen.image_uri, seen.title)

    def close(self) -> None:
        """Close the clients' channels."""
        self.clients.close()
