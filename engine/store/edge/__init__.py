"""The embedded backend: qdrant-edge shards in the engine process, under one data dir.

``EdgeStore`` (items) and ``EdgeUserStore`` (users, ``DATA_DIR/users``) each own
a locked data dir (``data_dir``); index builds run by copy and swap in a child
process (``rebuild``); queries are planned in ``engine.store.hybrid`` and turned
into qdrant-edge requests here (``query``, ``filters``).
"""

from engine.store.edge.store import EdgeStore
from engine.store.edge.users import EdgeUserStore

__all__ = ["EdgeStore", "EdgeUserStore"]
