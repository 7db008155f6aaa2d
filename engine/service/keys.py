"""API keys: who may call the service, for which tenants, with which role.

A key is ``mmrec_<id>_<secret>``: the id (8 hex digits) is public and names the key in
``mmrec keys list`` and in error messages; the secret is 256 random bits
(:func:`secrets.token_urlsafe`). The key file keeps, per key, its id, tenants, role,
creation time and a salted SHA-256 of the secret, never the key: a random secret of that
size needs no slow hash, and the check is one hash and one constant-time comparison.

The file (``DATA_DIR/keys.json`` by default, mode 0600) is replaced atomically on every
change, under an advisory lock so two ``mmrec keys`` commands do not lose each other's
writes. A running server re-reads it when its mtime, size or inode change, so a created or
revoked key counts at the next call, without a restart. No gRPC here: the command line
imports this module to manage keys.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.domain import DEFAULT_TENANT, MAX_TENANT_CHARS, FailedPrecondition, InvalidInput

log = logging.getLogger(__name__)

KEY_PREFIX = "mmrec"
FORMAT_VERSION = 1


class Role(enum.StrEnum):
    """What a key may do; each role includes the ones below it (admin ⊇ write ⊇ read)."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    def covers(self, needed: Role) -> bool:
        """Whether a key with this role may make a call that needs ``needed``."""
        order = list(Role)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the key's public id, its tenants and its role."""

    key_id: str
    tenants: frozenset[str]
    role: Role

    def tenant_list(self) -> str:
        """The key's tenants for a message, quoted and sorted."""
        return ", ".join(repr(t) for t in sorted(self.tenants))


@dataclass(frozen=True, slots=True)
class StoredKey:
    """One entry of the key file: a principal, when it was made, and the secret's salted hash."""

    principal: Principal
    created: str
    salt: str
    sha256: str

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` is this key's, compared in constant time."""
        return hmac.compare_digest(_digest(self.salt, secret), self.sha256)

    def to_json(self) -> dict[str, object]:
        """The entry as the key file stores it."""
        p = self.principal
        return {"id": p.key_id, "tenants": sorted(p.tenants), "role": p.role.value,
                "created": self.created, "salt": self.salt, "sha256": self.sha256}

    @classmethod
    def from_json(cls, entry: dict[str, object]) -> StoredKey:
        """An entry read back; KeyError, TypeError or ValueError when it is malformed."""
        tenants = entry["tenants"]
        if not isinstance(tenants, list) or not tenants:
            raise ValueError(f"key {entry.get('id')!r} has no tenants")
        principal = Principal(str(entry["id"]), frozenset(map(str, tenants)),
                              Role(str(entry["role"])))
        salt, digest = str(entry["salt"]), str(entry["sha256"])
        if len(bytes.fromhex(salt)) < 16 or len(bytes.fromhex(digest)) != 32:
            raise ValueError(f"key {principal.key_id!r} has a malformed salt or hash")
        return cls(principal, str(entry["created"]), salt, digest)


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def split_key(token: str) -> tuple[str, str] | None:
    """(id, secret) of a key in mmrec's format, or None for anything else."""
    parts = token.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def check_tenants(tenants: Iterable[str]) -> frozenset[str]:
    """The tenants a new key is bound to (empty names the default tenant), at least one."""
    names = frozenset(t.strip() or DEFAULT_TENANT for t in tenants)
    if not names:
        raise InvalidInput("a key needs at least one tenant: --tenant NAME (repeatable)")
    for name in names:
        if len(name) > MAX_TENANT_CHARS:
            raise InvalidInput(f"tenant {name[:20]!r}... is {len(name)} characters; the limit "
                               f"is {MAX_TENANT_CHARS}")
    return names


class KeyFile:
    """The key file: create, list and revoke keys, and check a presented key against it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._keys: dict[str, StoredKey] = {}
        self._seen: tuple[int, int, int] | None = None
        self.error = ""
        """Why the file could not be read at the last refresh (then no key is valid)."""

    # -- reading -----------------------------------------------------------------------------

    def keys(self) -> list[StoredKey]:
        """Every key, oldest first, as the file holds them now."""
        self.refresh()
        return sorted(self._keys.values(), key=lambda k: (k.created, k.principal.key_id))

    def verify(self, token: str) -> Principal | None:
        """The principal of a presented key, or None when it is not (or no longer) valid."""
        self.refresh()
        parts = split_key(token)
        if parts is None:
            return None
        stored = self._keys.get(parts[0])
        return stored.principal if stored is not None and stored.matches(parts[1]) else None

    def refresh(self) -> None:
        """Re-read the file when it changed since the last read (mtime, size or inode).

        A file that cannot be read leaves no key valid (fail closed) and says why in
        :attr:`error`; a missing file is an empty one.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._keys, self._seen, self.error = {}, None, ""
            return
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self._seen:
            return
        self._seen = seen
        try:
            self._keys = self._read()
            self.error = ""
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._keys, self.error = {}, f"cannot read the key file {self.path}: {exc}"
            log.error("%s; no API key is accepted until it is fixed", self.error)
            return
        if st.st_mode & 0o077:
            log.warning("key file %s is readable by other users (mode %o): chmod 600 it",
                        self.path, st.st_mode & 0o777)
        log.info("loaded %d API key(s) from %s", len(self._keys), self.path)

    def _read(self) -> dict[str, StoredKey]:
        data = json.loads(self.path.read_text(encoding="utf-8"))
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"unknown key file version {data.get('version')!r}")
        entries = [StoredKey.from_json(entry) for entry in data["keys"]]
        return {e.principal.key_id: e for e in entries}

    # -- writing -----------------------------------------------------------------------------

    def create(self, tenants: Iterable[str], role: Role) -> tuple[StoredKey, str]:
        """Make a key for ``tenants`` with ``role`` and store its hash; returns the entry and
        the key itself, which exists nowhere else afterwards."""
        names = check_tenants(tenants)
        with self._locked():
            keys = self._current()
            key_id = secrets.token_hex(4)
            while key_id in keys:
                key_id = secrets.token_hex(4)
            secret, salt = secrets.token_urlsafe(32), secrets.token_hex(16)
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            entry = StoredKey(Principal(key_id, names, role), created, salt,
                              _digest(salt, secret))
            keys[key_id] = entry
            self._write(keys.values())
        return entry, f"{KEY_PREFIX}_{key_id}_{secret}"

    def revoke(self, key_id: str) -> StoredKey | None:
        """Remove a key by id; returns it, or None when no key has that id."""
        with self._locked():
            keys = self._current()
            entry = keys.pop(key_id.strip(), None)
            if entry is not None:
                self._write(keys.values())
        return entry

    def _current(self) -> dict[str, StoredKey]:
        """The file's keys for a change; an unreadable file stops the change (it would be
        overwritten and its keys lost)."""
        self._seen = None
        self.refresh()
        if self.error:
            raise FailedPrecondition(f"{self.error}; fix or remove it first")
        return dict(self._keys)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive advisory lock on ``<key file>.lock`` while the file is changed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, keys: Iterable[StoredKey]) -> None:
        """Replace the file atomically (temp file with mode 0600, fsync, rename, fsync dir)."""
        body = json.dumps({"version": FORMAT_VERSION, "keys": [k.to_json() for k in keys]},
                          indent=1) + "\n"
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
