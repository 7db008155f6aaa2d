"""The server backend: qdrant-client against a Qdrant server or cluster (``prefer_grpc``).

``ServerStore`` (items) and ``ServerUserStore`` (users, the ``<collection>_users``
collection) share :class:`engine.store.server.client.ServerCollection`
(connect, create or check the collection, errors as domain exceptions).
"""

from engine.store.server.store import ServerStore
from engine.store.server.users import ServerUserStore

__all__ = ["ServerStore", "ServerUserStore"]
