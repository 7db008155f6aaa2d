"""Shared fixtures: tiny random models of the real classes, real stores, a real gRPC server."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from engine.config import ClipSettings, EngineConfig
from engine.runtime.engine import Engine
from engine.service import RunningServer, start_server
from engine.service.proto.mmrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.tiny_models import make_tiny_clip_settings, make_tiny_text_model


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised BERT with the real MiniLM tokenizer, saved once per run."""
    return make_tiny_text_model(tmp_path_factory.mktemp("tiny-text"))


def make_config(data_dir: Path, text_dir: Path, clip: ClipSettings | None = None,
                llm_dir: Path | None = None) -> EngineConfig:
    """An engine config on tiny models; ``clip`` None means CLIP configured without weights,
    ``llm_dir`` None means no re-ranker."""
    clip = clip or ClipSettings(model="ViT-B-32", pretrained=None)
    return EngineConfig.load(
        device="cpu",
        clip=clip.model_dump(),
        text_encoder={"model": str(text_dir)},
        # The LLM's order alone in search, so tests see what the stage did (the shipped
        # default is 0, chosen by benchmarks/retrieval_quality: the fused order).
        rerank={"model": str(llm_dir or ""), "budget_ms": 10_000, "search_blend_weight": 1.0},
        store={"data_dir": data_dir},
        service={"default_top_k": 5, "limits": {
            "max_top_k": 50, "max_text_chars": 200, "max_image_bytes": 200_000,
            "max_ids_per_request": 20}},
    )


@pytest.fixture
def tiny_config(tmp_path: Path, tiny_text_dir: Path) -> EngineConfig:
    """Config with tiny random CLIP and text encoders, an embedded store under tmp_path."""
    return make_config(tmp_path / "store", tiny_text_dir, make_tiny_clip_settings())


@pytest.fixture
def engine(tiny_config: EngineConfig) -> Iterator[Engine]:
    """An engine on tiny random models and a real qdrant-edge shard."""
    eng = Engine.from_config(tiny_config)
    yield eng
    eng.close()


class ServerThread:
    """A real grpc.aio server on loopback, run on its own event loop in a thread."""

    def __init__(self, engine: Engine, config: EngineConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: RunningServer = asyncio.run_coroutine_threadsafe(
            start_server(engine, config, port=0), self.loop).result(30)
        self.target = f"127.0.0.1:{self.running.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(0.5), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def server(engine: Engine, tiny_config: EngineConfig) -> Iterator[ServerThread]:
    """The service on tiny models, listening on a free loopback port."""
    srv = ServerThread(engine, tiny_config)
    yield srv
    srv.stop()


@pytest.fixture
def stub(server: ServerThread) -> Iterator[pb_grpc.RecommenderStub]:
    """A raw generated stub connected to the test server."""
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.RecommenderStub(channel)


def png_bytes(seed: int, size: int = 40, mode: str = "RGB") -> bytes:
    """A small deterministic noise image, PNG-encoded."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB").convert(mode)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
