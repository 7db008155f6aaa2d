"""Where an indexing job writes: the engine's own store, or a running service.

A target does three things for the pipeline, each timed as a stage: prepare one
row (fetch and decode its image; runs in a worker pool), encode a batch, and
write a batch. Rows it cannot use come back as rejections with a reason; only
failures of the target itself (store down, service unreachable) stop a job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from engine.client import MmrecClient
from engine.domain import (
    InvalidInput,
    ItemInput,
    ItemRecord,
    MmrecError,
    StoredItem,
    Unavailable,
)
from engine.encoders.images import decode_image
from engine.runtime.engine import Engine
from indexers.fetch import FetchOptions, fetch_image_bytes


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated row ready to encode: the record and its decoded image and/or raw bytes."""

    record: ItemRecord
    image: Image.Image | None = None
    image_bytes: bytes | None = None


Rejection = tuple[int, str]
"""(index in the batch, reason) of an item a target would not take."""


class Target(Protocol):
    """What the pipeline needs from a destination."""

    def prepare(self, record: ItemRecord, base_dir: Path) -> Prepared:
        """Fetch and decode what the record points at; raise a domain error for a bad row."""

    def encode(self, batch: Sequence[Prepared]) -> tuple[list[Any], list[Rejection]]:
        """Encode a batch; returns what :meth:`write` takes (in batch order, without the
        rejected ones) and the rejections."""

    def write(self, encoded: list[Any]) -> list[Rejection]:
        """Store encoded items (indexes refer to ``encoded``); returns rejections."""

    def flush(self) -> None:
        """Make everything written so far durable (called before each checkpoint)."""

    def finish(self) -> None:
        """End of the job: build indexes, final flush."""

    def signature(self) -> dict[str, Any]:
        """What identifies this target's output, for checkpoints (models, channels, where)."""

    def count(self) -> int | None:
        """Items the destination holds, for the summary."""


TargetFactory = Callable[[], AbstractContextManager[Target]]
"""Opens a target of one's own (``mmrec index --ray``: each actor opens one; picklable)."""


def fetch_policy(fetch: FetchOptions) -> dict[str, Any]:
    """The fetch options that decide which rows pass, for a target's signature: a job re-run
    with other limits indexes again instead of keeping the rows the old limits refused."""
    return {"allow_http": fetch.allow_http, "allow_outside_paths": fetch.allow_outside_paths,
            "max_image_bytes": fetch.max_bytes}


def shrink(image: Image.Image, max_side: int) -> Image.Image:
    """The image scaled down so its longer side is at most ``max_side`` (encoders need ~224)."""
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return image


class StoreTarget:
    """Encode here with the engine's models and upsert into its store (data dir or server)."""

    def __init__(self, engine: Engine, fetch: FetchOptions, max_image_side: int = 512) -> None:
        self.engine = engine
        self.fetch = fetch
        self.max_image_side = max_image_side
        self.reads_images = engine.clip is not None

    def prepare(self, record: ItemRecord, base_dir: Path) -> Prepared:
        """Decode and shrink the image in a worker; without CLIP, images are not read at all."""
        if not record.image_uri:
            return Prepared(record)
        if not self.reads_images:
            if not record.document_text:
                raise InvalidInput("row has only an image, and the CLIP channel is off")
            return Prepared(record)
        data = fetch_image_bytes(record.image_uri, base_dir, self.fetch)
        image = decode_image(data, what=f"image {record.image_uri}")
        return Prepared(record, image=shrink(image, self.max_image_side))

    def encode(self, batch: Sequence[Prepared]) -> tuple[list[StoredItem], list[Rejection]]:
        """Fused and per-channel vectors; a batch the engine refuses is retried item by item."""
        return self.engine.encode_each([ItemInput(p.record, p.image) for p in batch])

    def write(self, encoded: list[StoredItem]) -> list[Rejection]:
        """Upsert into the store (deterministic ids: a repeat replaces, never duplicates)."""
        self.engine.store.upsert(encoded)
        return []

    def flush(self) -> None:
        """Persist the store's segments."""
        self.engine.store.flush()

    def finish(self) -> None:
        """Build the HNSW index (off the serving path: a child process) and flush."""
        self.engine.store.optimize(wait=True)
        self.engine.store.flush()

    def signature(self) -> dict[str, Any]:
        """Models, channel weights and layout, the store's identity and the fetch policy."""
        cfg = self.engine.config
        return {
            "schema": dict(self.engine.schema.dense),
            "text": self.engine.text.name,
            "clip": self.engine.clip_status.name if self.engine.clip else "off",
            "weights": dict(self.engine.fuser.weights),
            "image_weight": cfg.clip.image_weight,
            "store": str(cfg.store.url or Path(cfg.store.data_dir).resolve()),
            "fetch": fetch_policy(self.fetch),
        }

    def count(self) -> int | None:
        """Items in the store."""
        return self.engine.store.count()


class ServiceTarget:
    """Stream items to a running service's UpsertItems; the service encodes and stores them.

    Each batch is one client-streaming call: gRPC flow control holds the job back
    while the service is busy, and the call's answer acknowledges the batch, so a
    checkpoint after it never covers an item the service did not take.
    """

    def __init__(self, client: MmrecClient, fetch: FetchOptions) -> None:
        self.client = client
        self.fetch = fetch

    def prepare(self, record: ItemRecord, base_dir: Path) -> Prepared:
        """Fetch the image bytes (the service decodes and validates them)."""
        if not record.image_uri:
            return Prepared(record)
        return Prepared(record, image_bytes=fetch_image_bytes(record.image_uri, base_dir,
                                                              self.fetch))

    def encode(self, batch: Sequence[Prepared]) -> tuple[list[Prepared], list[Rejection]]:
        """Nothing to do here: the service encodes."""
        return list(batch), []

    def write(self, encoded: list[Prepared]) -> list[Rejection]:
        """One UpsertItems stream for the batch; the service's rejections come back."""
        try:
            report = self.client.upsert_items((p.record, p.image_bytes) for p in encoded)
        except MmrecError as exc:
            raise Unavailable(f"UpsertItems to {self.client.target} failed: "
                              f"{exc.status or type(exc).__name__}: {exc}") from exc
        return [(index, reason) for index, _id, reason in report.rejected]

    def flush(self) -> None:
        """Nothing to do: an acknowledged UpsertItems call is already in the service's store."""

    def finish(self) -> None:
        """Nothing to do: the service schedules its own index builds."""

    def signature(self) -> dict[str, Any]:
        """The service address, the models it runs and the fetch policy."""
        info = self.client.info()
        return {"target": self.client.target,
                "models": [(m.role, m.name, m.loaded) for m in info.models],
                "fetch": fetch_policy(self.fetch)}

    def count(self) -> int | None:
        """Items the service reports."""
        return self.client.info().item_count
