"""API keys, roles, tenants and TLS of the gRPC service: a real server on loopback with auth
turned on, a real key file made by the same code as `mmrec keys`, no mocks."""

from __future__ import annotations

import json
import logging
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from typer.testing import CliRunner

from engine.cli import app
from engine.client import MmrecClient
from engine.config import AuthSettings, EngineConfig, is_loopback
from engine.domain import (
    Event,
    FailedPrecondition,
    ItemRecord,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from engine.runtime.engine import Engine
from engine.service.auth import ROLE_OF
from engine.service.keys import KeyFile, Role
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.proto.mmrec.v1 import recommender_pb2_grpc as pb_grpc
from engine.service.wire import SERVICE
from indexers.job import run_index_job
from indexers.pipeline import JobOptions
from tests.conftest import ServerThread

runner = CliRunner()

Metadata = tuple[tuple[str, str], ...]
CALLS: dict[str, Callable[[pb_grpc.RecommenderStub, Metadata], Any]] = {
    "Search": lambda s, md: s.Search(pb.SearchRequest(text="x"), metadata=md, timeout=10),
    "GetItems": lambda s, md: s.GetItems(pb.GetItemsRequest(ids=["x"]), metadata=md, timeout=10),
    "Recommend": lambda s, md: s.Recommend(pb.RecommendRequest(context="x"), metadata=md,
                                           timeout=10),
    "GetInfo": lambda s, md: s.GetInfo(pb.GetInfoRequest(), metadata=md, timeout=10),
    "UpsertItems": lambda s, md: s.UpsertItems(
        iter([pb.UpsertItemsRequest(item=pb.Item(id="x", title="X"))]), metadata=md, timeout=10),
    "DeleteItems": lambda s, md: s.DeleteItems(pb.DeleteItemsRequest(ids=["x"]), metadata=md,
                                               timeout=10),
    "RecordEvents": lambda s, md: s.RecordEvents(
        iter([pb.Event(user_id="u", item_id="x", kind="view")]), metadata=md, timeout=10),
    "DeleteUser": lambda s, md: s.DeleteUser(pb.DeleteUserRequest(user_id="u"), metadata=md,
                                             timeout=10),
}
"""One call of every Recommender RPC, each with the metadata given."""


def with_auth(config: EngineConfig, **settings: Any) -> EngineConfig:
    """``config`` with the [auth] section set to ``settings``."""
    return config.model_copy(update={"auth": AuthSettings(**settings)})


@pytest.fixture
def keys(tiny_config: EngineConfig) -> KeyFile:
    """The key file the auth server reads (DATA_DIR/keys.json), empty at first."""
    return KeyFile(tiny_config.key_path())


@pytest.fixture
def auth_server(engine: Engine, tiny_config: EngineConfig) -> Iterator[ServerThread]:
    """The service on loopback with auth turned on explicitly (auth.enabled = true)."""
    srv = ServerThread(engine, with_auth(tiny_config, enabled=True))
    yield srv
    srv.stop()


@pytest.fixture
def raw(auth_server: ServerThread) -> Iterator[pb_grpc.RecommenderStub]:
    """A generated stub on the auth server; each call passes its own metadata."""
    with grpc.insecure_channel(auth_server.target) as channel:
        yield pb_grpc.RecommenderStub(channel)


def refused(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def seed(server: ServerThread, keys: KeyFile) -> None:
    """Two items of tenant 'a', three of tenant 'b', written with an admin key for both."""
    _, admin = keys.create(["a", "b"], Role.ADMIN)
    with MmrecClient(server.target, api_key=admin) as client:
        report = client.upsert_items(
            [(ItemRecord(id=f"{t}{i}", tenant=t, title=f"Item {t}{i} lamp"), None)
             for t, n in (("a", 2), ("b", 3)) for i in range(n)])
    assert report.upserted == 5 and not report.rejected


def test_every_rpc_has_a_role_and_a_call_here() -> None:
    assert set(ROLE_OF) == {m.name for m in SERVICE.methods} == set(CALLS)


def test_no_key_is_unauthenticated_on_every_rpc(raw: pb_grpc.RecommenderStub,
                                                keys: KeyFile) -> None:
    for name, call in CALLS.items():  # no key exists yet: the message says how to make one
        code, message = refused(lambda call=call: call(raw, ()))
        assert code == grpc.StatusCode.UNAUTHENTICATED, name
        assert "mmrec keys create" in message and "authorization: Bearer" in message, name
    _, token = keys.create(["a"], Role.ADMIN)
    for metadata in ((), (("x-api-key", "mmrec_00000000_nope"),),
                     (("authorization", f"Basic {token}"),)):
        for name, call in CALLS.items():
            code, message = refused(lambda call=call, md=metadata: call(raw, md))
            assert code == grpc.StatusCode.UNAUTHENTICATED, (name, metadata)
            assert token not in message
    _, message = refused(lambda: CALLS["Search"](raw, (("x-api-key", token[:-2]),)))
    assert "not valid" in message


def test_health_and_reflection_need_no_key(auth_server: ServerThread, keys: KeyFile) -> None:
    keys.create(["a"], Role.READ)
    with grpc.insecure_channel(auth_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE.full_name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(reflect.ServerReflectionInfo(iter([request]), timeout=5))
        assert SERVICE.full_name in {s.name for s in reply.list_services_response.service}
    with MmrecClient(auth_server.target) as client:
        client.wait_ready(timeout=10)


def test_read_key_reads_but_cannot_write(auth_server: ServerThread, keys: KeyFile) -> None:
    seed(auth_server, keys)
    _, token = keys.create(["a"], Role.READ)
    with MmrecClient(auth_server.target, api_key=token) as client:
        assert {h.record.id for h in client.search(text="lamp", tenant="a").hits} == {"a0", "a1"}
        assert [r.id for r in client.get_items(["a1"], tenant="a")] == ["a1"]
        client.recommend(positive_ids=["a0"], tenant="a")
        writes = {
            "UpsertItems": lambda: client.upsert_items([(ItemRecord(id="n", tenant="a",
                                                                   title="New"), None)]),
            "DeleteItems": lambda: client.delete_items(["a0"], tenant="a"),
            "DeleteUser": lambda: client.delete_user("u", tenant="a"),
            "RecordEvents": lambda: client.record_events([Event("u", "a0", "view", tenant="a")]),
        }
        for rpc, write in writes.items():
            with pytest.raises(PermissionDenied) as denied:
                write()
            assert denied.value.status == "PERMISSION_DENIED"
            message = str(denied.value)
            assert f"{rpc} needs role 'write'" in message and "has role 'read'" in message
            assert token not in message
        assert [r.id for r in client.get_items(["a0"], tenant="a")] == ["a0"]  # not deleted


def test_tenant_key_is_refused_other_tenants(auth_server: ServerThread, keys: KeyFile) -> None:
    seed(auth_server, keys)
    _, token = keys.create(["a"], Role.WRITE)
    with MmrecClient(auth_server.target, api_key=token) as client:
        unary = {
            "Search": lambda t: client.search(text="lamp", tenant=t),
            "GetItems": lambda t: client.get_items(["b0"], tenant=t),
            "Recommend": lambda t: client.recommend(positive_ids=["b0"], tenant=t),
            "DeleteItems": lambda t: client.delete_items(["b0"], tenant=t),
            "DeleteUser": lambda t: client.delete_user("u", tenant=t),
        }
        for rpc, call in unary.items():
            for other, named in (("b", "'b'"), ("", "'default'")):  # empty: the default tenant
                with pytest.raises(PermissionDenied) as denied:
                    call(other)
                assert named in str(denied.value) and "bound to tenant(s) 'a'" in str(
                    denied.value), rpc
        report = client.upsert_items([
            (ItemRecord(id="a9", tenant="a", title="Mine"), None),
            (ItemRecord(id="b9", tenant="b", title="Not mine"), None),
            (ItemRecord(id="a8", tenant="a", title="Mine too"), None)])
        assert report.upserted == 2 and [(i, item) for i, item, _ in report.rejected] == [
            (1, "b9")]
        assert "'b'" in report.rejected[0][2] and "--tenant b" in report.rejected[0][2]
        assert [r.id for r in client.get_items(["a9", "a8"], tenant="a")] == ["a9", "a8"]
        events = client.record_events([Event("u", "a9", "view", tenant="a"),
                                       Event("u", "b0", "view", tenant="b"),
                                       Event("u", "a8", "click", tenant="a")])
        assert events.recorded == 2 and events.users_updated == 1
        assert [i for i, _ in events.rejected] == [1] and "'b'" in events.rejected[0][1]
    _, admin_b = keys.create(["b"], Role.ADMIN)
    with MmrecClient(auth_server.target, api_key=admin_b) as client, pytest.raises(NotFound):
        client.get_items(["b9"], tenant="b")  # the refused message was never stored


def test_bearer_and_x_api_key_both_work(raw: pb_grpc.RecommenderStub, keys: KeyFile) -> None:
    _, token = keys.create(["default"], Role.READ)
    for metadata in ((("authorization", f"Bearer {token}"),),
                     (("authorization", f"bearer  {token} "),),
                     (("x-api-key", token),)):
        assert raw.GetInfo(pb.GetInfoRequest(), metadata=metadata, timeout=10).version


def test_revoke_takes_effect_without_restart(auth_server: ServerThread, tmp_path: Path) -> None:
    data_dir = str(tmp_path / "store")
    with MmrecClient(auth_server.target) as anonymous, pytest.raises(Unauthenticated) as before:
        anonymous.info()
    assert before.value.status == "UNAUTHENTICATED" and "has none yet" in str(before.value)
    created = runner.invoke(app, ["keys", "create", "--data-dir", data_dir, "--tenant",
                                  "default", "--role", "read"])
    assert created.exit_code == 0, created.output
    token = created.stdout.splitlines()[-1]
    key_id = token.split("_")[1]
    with MmrecClient(auth_server.target, api_key=token) as client:
        assert client.info().item_count == 0
        revoked = runner.invoke(app, ["keys", "revoke", "--data-dir", data_dir, key_id])
        assert revoked.exit_code == 0, revoked.output
        with pytest.raises(Unauthenticated, match="not valid"):
            client.info()
    again = runner.invoke(app, ["keys", "revoke", "--data-dir", data_dir, key_id])
    assert again.exit_code == 1 and "no key with id" in again.output


def test_key_file_holds_no_key_in_clear(tmp_path: Path) -> None:
    keys = KeyFile(tmp_path / "data" / "keys.json")
    entry, token = keys.create(["a", "b"], Role.WRITE)
    text = keys.path.read_text()
    secret = token.split("_", 2)[2]
    assert token not in text and secret not in text and entry.principal.key_id in text
    assert stat.S_IMODE(keys.path.stat().st_mode) == 0o600
    assert keys.verify(token) == entry.principal
    assert keys.verify(token + "x") is None and keys.verify(secret) is None
    listed = runner.invoke(app, ["keys", "list", "--data-dir", str(tmp_path / "data")])
    assert listed.exit_code == 0 and entry.principal.key_id in listed.stdout
    assert "write" in listed.stdout and "a, b" in listed.stdout and secret not in listed.stdout


def test_keys_create_prints_the_key_alone_on_the_last_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"  # does not exist yet
    result = runner.invoke(app, ["keys", "create", "--data-dir", str(data_dir), "--tenant", "a",
                                 "--tenant", "b", "--role", "write"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) > 1 and lines[-1].startswith("mmrec_") and " " not in lines[-1]
    principal = KeyFile(data_dir / "keys.json").verify(lines[-1])
    assert principal is not None and principal.tenants == {"a", "b"}
    assert principal.role == Role.WRITE and principal.key_id in lines[0]
    bad = runner.invoke(app, ["keys", "create", "--data-dir", str(data_dir), "--tenant", "a",
                              "--role", "root"])
    assert bad.exit_code != 0


def test_auth_is_on_by_default_off_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
        assert not EngineConfig.load(service={"host": host}).auth_enabled(), host
    for host in ("0.0.0.0", "::", "[::]", "", "10.1.2.3", "192.168.0.7", "mmrec.example.org"):
        assert not is_loopback(host), host
        assert EngineConfig.load(service={"host": host}).auth_enabled(), host
    assert not EngineConfig.load(service={"host": "0.0.0.0"},
                                 auth={"enabled": False}).auth_enabled()
    monkeypatch.setenv("MMREC_AUTH__ENABLED", "true")
    assert EngineConfig.load().auth_enabled()  # loopback, but asked for
    with pytest.raises(ValueError, match="tls_key"):
        AuthSettings(tls_cert=Path("cert.pem"))
    with pytest.raises(ValueError, match="client_ca"):
        AuthSettings(client_ca=Path("ca.pem"))


def test_get_info_shows_only_the_keys_tenants_and_no_path(
        auth_server: ServerThread, keys: KeyFile, tmp_path: Path, tiny_text_dir: Path) -> None:
    seed(auth_server, keys)
    _, token_a = keys.create(["a"], Role.READ)
    with MmrecClient(auth_server.target, api_key=token_a) as client:
        info = client.info()
    assert info.item_count == 2 and info.store == "qdrant-edge shard"
    shown = repr(info)
    assert str(tmp_path) not in shown and str(tiny_text_dir) not in shown
    assert tiny_text_dir.name in shown  # the text model is still named, by its folder
    _, token_ab = keys.create(["a", "b", "c"], Role.READ)
    with MmrecClient(auth_server.target, api_key=token_ab) as client:
        assert client.info().item_count == 5


def test_cli_sends_the_api_key(auth_server: ServerThread, keys: KeyFile) -> None:
    seed(auth_server, keys)
    _, token = keys.create(["a"], Role.READ)
    target = ["--target", auth_server.target]
    without = runner.invoke(app, ["info", *target])
    assert without.exit_code == 2 and "UNAUTHENTICATED" in without.output
    flag = runner.invoke(app, ["search", "lamp", "--tenant", "a", *target, "--api-key", token])
    assert flag.exit_code == 0 and "a0" in flag.output, flag.output
    env = runner.invoke(app, ["info", *target], env={"MMREC_API_KEY": token})
    assert env.exit_code == 0 and "2 items" in env.output, env.output
    other = runner.invoke(app, ["search", "lamp", "--tenant", "b", *target, "--api-key", token])
    assert other.exit_code == 2 and "PERMISSION_DENIED" in other.output


def test_server_without_keys_starts_and_warns(engine: Engine, tiny_config: EngineConfig,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine.service")
    srv = ServerThread(engine, with_auth(tiny_config, enabled=True))
    try:
        with MmrecClient(srv.target) as client:
            client.wait_ready(timeout=10)
    finally:
        srv.stop()
    text = caplog.text
    assert "every call but health and reflection will be UNAUTHENTICATED" in text
    assert "mmrec keys create" in text and "without TLS" in text


# -- TLS ---------------------------------------------------------------------------------------

def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 and its key, as PEM files: made
    with `cryptography` when it is installed, else with the openssl command, else skipped."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    try:
        import cryptography  # noqa: F401
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("TLS test: neither the `cryptography` package nor the openssl command "
                        "is available to make a self-signed certificate")
        subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                        f"/CN={name}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=60)
        return cert, key
    return _cryptography_cert(cert, key, name)


def _cryptography_cert(cert: Path, key: Path, name: str) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(private.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, key


def test_tls_and_mtls(engine: Engine, tiny_config: EngineConfig, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "server")
    srv = ServerThread(engine, with_auth(tiny_config, tls_cert=cert, tls_key=key))
    try:  # TLS alone (auth off on loopback): a TLS call works, a plaintext one does not
        with MmrecClient(srv.target, root_certificates=cert, timeout=10) as client:
            assert client.info().item_count == 0
        with MmrecClient(srv.target, timeout=3) as plain, pytest.raises(Unavailable):
            plain.info()
    finally:
        srv.stop()
    client_cert, client_key = self_signed(tmp_path, "client")
    srv = ServerThread(engine, with_auth(tiny_config, tls_cert=cert, tls_key=key,
                                         client_ca=client_cert))
    try:  # mTLS: a client without its certificate is turned away
        with MmrecClient(srv.target, root_certificates=cert, private_key=client_key,
                         certificate_chain=client_cert, timeout=10) as client:
            assert client.info().item_count == 0
        with MmrecClient(srv.target, root_certificates=cert, timeout=3) as anonymous, \
                pytest.raises(Unavailable):
            anonymous.info()
    finally:
        srv.stop()


def test_an_unreadable_key_file_accepts_no_key(tmp_path: Path) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    _, token = keys.create(["a"], Role.READ)
    keys.path.write_text(keys.path.read_text().replace('"sha256": "', '"sha256": "zz'))
    assert keys.verify(token) is None and "cannot read the key file" in keys.error
    with pytest.raises(FailedPrecondition, match="fix or remove it first"):
        keys.create(["a"], Role.READ)  # would overwrite the keys it cannot read


def test_index_job_through_a_service_sends_its_key(auth_server: ServerThread, keys: KeyFile,
                                                   tiny_config: EngineConfig,
                                                   tmp_path: Path) -> None:
    catalog = tmp_path / "items.jsonl"
    catalog.write_text("".join(json.dumps({"id": f"j{i}", "title": f"Lamp {i}"}) + "\n"
                               for i in range(3)))
    _, token = keys.create(["default"], Role.WRITE)
    def index(api_key: str | None) -> Any:
        return run_index_job(tiny_config, catalog, service=auth_server.target, api_key=api_key,
                             checkpoint_dir=tmp_path / "jobs", options=JobOptions(progress=False))

    with pytest.raises(Unauthenticated):
        index(None)
    summary = index(token)
    assert summary.indexed == 3 and summary.failed == 0
