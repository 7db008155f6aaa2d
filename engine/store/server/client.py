"""What the server-backed stores share of qdrant-client: the connection, the error
mapping, and a hybrid plan spelled as Query API requests.

``ServerStore`` (items) and ``ServerUserStore`` (users) both build on
:class:`ServerCollection` (connect, check the collection, count, flush, close)
and turn client errors into ``Unavailable`` with :func:`server_errors`. Calls that are safe
to repeat go through :meth:`ServerCollection._call`, which retries transport failures
(:func:`transient`) by the store's :class:`~engine.store.retry.RetryPolicy` and then says
which server is unreachable and what to check.
:func:`hybrid_requests` spells a :class:`~engine.store.hybrid.HybridPlan` in
qdrant-client types, the way ``engine.store.edge.query`` spells it in qdrant-edge types.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from engine.domain import POPULARITY, FailedPrecondition, SchemaMismatch, Unavailable
from engine.store.hybrid import ChannelPlan, HybridPlan, RecommendValues
from engine.store.lifecycle import StoreLifecycle
from engine.store.retry import GaveUp, RetryPolicy
from engine.store.schema import Quantization, SparseValues, VectorValues
from engine.store.server.filters import client_filter, client_tenant_filter

logger = logging.getLogger(__name__)

T = TypeVar("T")

CLIENT_ERRORS = (UnexpectedResponse, ResponseHandlingException, grpc.RpcError, ConnectionError)
"""What qdrant-client raises when the server or the transport fails."""


TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                             grpc.StatusCode.ABORTED})
"""gRPC codes of a server that is down, restarting or failing over: worth another try."""

TRANSIENT_HTTP = frozenset({429, 502, 503, 504})
"""HTTP statuses of a server (or its proxy) that is overloaded or not answering yet."""


def transient(error: BaseException) -> bool:
    """Whether ``error`` is a transport failure another attempt may not meet: a refused or
    dropped connection (REST: ``ResponseHandlingException``), gRPC UNAVAILABLE and kin, or an
    HTTP 429/502-504. A request the server refused (bad input, missing collection) is not."""
    if isinstance(error, grpc.RpcError):
        code = error.code() if isinstance(error, grpc.Call) else None
        return code is None or code in TRANSIENT_CODES
    if isinstance(error, UnexpectedResponse):
        return error.status_code in TRANSIENT_HTTP
    return isinstance(error, ResponseHandlingException | ConnectionError)


def last_error(error: BaseException) -> str:
    """A client error in one line: the gRPC code and details, or the exception's own text."""
    if isinstance(error, grpc.RpcError) and isinstance(error, grpc.Call):
        return f"gRPC {error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


@contextlib.contextmanager
def server_errors(action: str) -> Iterator[None]:
    """Turn transport and server errors into ``Unavailable`` (retrying may help)."""
    try:
        yield
    except CLIENT_ERRORS as exc:
        raise Unavailable(f"qdrant server failed to {action}: {exc}") from exc


def connect(
    url_or_client: str | QdrantClient, api_key: str | None
) -> tuple[QdrantClient, bool, str]:
    """The client, whether the store made it (and so closes it), and where it points.

    A URL gets a gRPC client (``prefer_grpc=True``); a ready client is used as it is.
    """
    if isinstance(url_or_client, QdrantClient):
        options = getattr(url_or_client, "init_options", {}) or {}
        return url_or_client, False, str(options.get("url") or options.get("location") or "client")
    client = QdrantClient(url=url_or_client, prefer_grpc=True, api_key=api_key)
    return client, True, url_or_client


class ServerCollection(StoreLifecycle):
    """One collection on a Qdrant server: the connection, its lifecycle, and counting.

    A subclass sets ``_collection`` and calls :meth:`_open`, which connects and
    runs its ``_ensure_collection`` (create or check), closing again if that fails.
    A client passed in is not closed by :meth:`close`; its owner closes it.
    """

    _collection: str
    _placement: dict[str, int]
    """``shard_number`` and ``replication_factor`` for a collection this store creates (the
    ones set; the server's defaults otherwise). An existing collection keeps its own."""
    _kind = "collection"
    """What the collection holds, for messages: "collection", "users collection"."""

    def _open(self, url_or_client: str | QdrantClient, api_key: str | None,
              retry: RetryPolicy | None = None) -> None:
        """Connect and make sure the collection is there and fits (not retried: a store that
        cannot open fails at once, with what went wrong)."""
        self._closed = False
        self._retry = retry or RetryPolicy()
        self._client, self._owns_client, self._where = connect(url_or_client, api_key)
        try:
            self._ensure_collection()
        except BaseException:
            self.close()
            raise
        logger.info("opened %s", self.description)

    def _ensure_collection(self) -> None:
        """Create the collection if missing, else check it fits this store (SchemaMismatch)."""
        with server_errors(f"open collection {self._collection}"):
            if not self._client.collection_exists(self._collection):
                self._create_collection()
                return
            info = self._client.get_collection(self._collection)
        problems = self._differences(info)
        if problems:
            raise SchemaMismatch(self._mismatch(problems))
        self._adopt(info)

    @abc.abstractmethod
    def _create_collection(self) -> None:
        """Create the collection with this store's vectors and payload indexes."""

    @abc.abstractmethod
    def _differences(self, info: models.CollectionInfo) -> list[str]:
        """How an existing collection differs from what this store needs (empty: it fits)."""

    @abc.abstractmethod
    def _mismatch(self, problems: list[str]) -> str:
        """The message of a mismatch: what differs and what the operator can do."""

    def _adopt(self, info: models.CollectionInfo) -> None:
        """Bring a fitting existing collection up to date (payload indexes); none by default."""

    def _call(self, action: str, call: Callable[[], T]) -> T:
        """``call()``, which must be safe to repeat, retried while the server is unreachable.

        After the retries, ``Unavailable`` names the server, says it is unreachable and what
        to check; an error that is not a transport failure is ``Unavailable`` at once, as in
        :func:`server_errors`.
        """
        try:
            return self._retry.run(call, transient)
        except GaveUp as gave_up:
            raise Unavailable(
                f"the Qdrant server at {self._where} is unreachable: could not {action} "
                f"({self._kind} {self._collection}) in {gave_up.attempts} attempts over "
                f"{gave_up.elapsed:.1f} s, stopped by the {gave_up.why}; last error: "
                f"{last_error(gave_up.last)}. Check that the Qdrant server is running and "
                f"reachable from this host at store.url ({self._where}: address, port, TLS, "
                f"store.api_key); the health check reports NOT_SERVING until it answers again"
            ) from gave_up.last
        except CLIENT_ERRORS as exc:
            raise Unavailable(f"qdrant server failed to {action}: {exc}") from exc

    def reachable(self) -> bool:
        """Whether the server answers now: one cheap call (does the collection exist), never
        retried, any failure counting as no (the service's health probe)."""
        if self._closed:
            return False
        try:
            self._client.collection_exists(self._collection)
        except (*CLIENT_ERRORS, OSError):
            return False
        return True

    def _check_open(self) -> None:
        """Refuse calls after :meth:`close`."""
        if self._closed:
            raise FailedPrecondition(f"the store for {self._kind} {self._collection} is closed")

    def count(self, tenant: str | None = None) -> int:
        """Every point, or one tenant's (an exact count)."""
        self._check_open()
        result = self._call("count the points", lambda: self._client.count(
            self._collection,
            count_filter=None if tenant is None else client_tenant_filter(tenant),
            exact=True,
        ))
        return int(result.count)

    def flush(self) -> None:
        """Nothing to do: the server acknowledges a write (``wait=True``) once its WAL has it."""
        self._check_open()

    def close(self) -> None:
        """Close the client if this store made it; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            with contextlib.suppress(Exception):
                self._client.close()

    @property
    def description(self) -> str:
        """One line for ``mmrec info``."""
        return f"qdrant server {self._where}, {self._kind} {self._collection}"


def client_vector(values: VectorValues) -> list[float] | models.SparseVector:
    """A validated vector in qdrant-client form."""
    if isinstance(values, SparseValues):
        return models.SparseVector(indices=values.indices, values=values.values)
    return values


def client_query(channel: ChannelPlan) -> list[float] | models.SparseVector | models.Query:
    """A channel's query: its vector (nearest), or a recommend query from its examples."""
    if isinstance(channel.vector, RecommendValues):
        strategy = models.RecommendStrategy.BEST_SCORE
        if channel.vector.strategy == "sum_scores":
            strategy = models.RecommendStrategy.SUM_SCORES
        return models.RecommendQuery(recommend=models.RecommendInput(
            positive=channel.vector.positives, negative=channel.vector.negatives,
            strategy=strategy,
        ))
    return client_vector(channel.vector)


def quantization_config(quantization: Quantization) -> models.QuantizationConfig | None:
    """The collection's quantization config, quantized vectors kept in RAM."""
    if quantization.kind == "int8":
        return models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
            type=models.ScalarType.INT8, quantile=0.99, always_ram=True))
    if quantization.kind == "binary":
        return models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True))
    return None


def _params(
    plan: HybridPlan, channel: ChannelPlan, hnsw_ef: int, quantization: Quantization
) -> models.SearchParams:
    """Search params of one channel: ``hnsw_ef`` and, if dense, the quantization's
    oversampling and rescoring; the tenant as IDF corpus if sparse."""
    if not channel.sparse:
        if not quantization.enabled:
            return models.SearchParams(hnsw_ef=hnsw_ef)
        return models.SearchParams(hnsw_ef=hnsw_ef, quantization=models.QuantizationSearchParams(
            rescore=quantization.rescore, oversampling=quantization.oversampling))
    corpus = client_tenant_filter(plan.filter.tenant)
    return models.SearchParams(hnsw_ef=hnsw_ef, idf=models.IdfCorpusParams(corpus=corpus))


def _by_popularity() -> models.OrderByQuery:
    """Qdrant's ``order_by`` on the popularity payload field, most popular first."""
    return models.OrderByQuery(
        order_by=models.OrderBy(key=POPULARITY, direction=models.Direction.DESC)
    )


def _popularity_fused(
    plan: HybridPlan, flt: models.Filter, prefetches: list[models.Prefetch], fusion: models.Query
) -> tuple[models.QueryRequest, models.QueryRequest]:
    """The request fusing the candidates (A) with their popularity ranking (B), and B alone.

    A is the channels' fusion (or the one channel's prefetch), B the same A ordered
    by popularity; the outer RRF weighs them ``plan.popularity_weights``."""
    limit = plan.candidate_limit
    matches = prefetches[0] if not plan.fused else models.Prefetch(
        prefetch=prefetches, query=fusion, limit=limit, filter=flt,
    )
    popular = models.Prefetch(prefetch=[matches], query=_by_popularity(), limit=limit, filter=flt)
    outer = models.RrfQuery(rrf=models.Rrf(k=plan.rrf_k, weights=plan.popularity_weights))
    fused = models.QueryRequest(
        prefetch=[matches, popular], query=outer, limit=plan.result_limit, filter=flt,
        with_payload=True,
    )
    ranking = models.QueryRequest(
        prefetch=[matches], query=_by_popularity(), limit=limit, filter=flt
    )
    return fused, ranking


def hybrid_requests(
    plan: HybridPlan, hnsw_ef: int, quantization: Quantization | None = None
) -> list[models.QueryRequest]:
    """The fused request, then (if asked, and the plan is not one plain nearest search)
    each channel's own request, and the popularity ranking if the plan has one."""
    flt = client_filter(plan.filter)
    channels = [
        models.QueryRequest(
            query=client_query(c), using=c.using, limit=c.limit, filter=flt,
            params=_params(plan, c, hnsw_ef, quantization or Quantization()),
        )
        for c in plan.channels
    ]
    if plan.plain:
        return [channels[0].model_copy(update={"limit": plan.result_limit, "with_payload": True})]
    fusion: models.Query = models.RrfQuery(rrf=models.Rrf(k=plan.rrf_k, weights=plan.weights))
    if plan.fusion == "dbsf":
        fusion = models.FusionQuery(fusion=models.Fusion.DBSF)
    prefetches = [
        models.Prefetch(query=r.query, using=r.using, limit=r.limit, filter=flt, params=r.params)
        for r in channels
    ]
    if plan.popularity:
        fused, ranking = _popularity_fused(plan, flt, prefetches, fusion)
        return [fused, *channels, ranking] if plan.with_channel_hits else [fused]
    fused = models.QueryRequest(
        prefetch=prefetches, query=fusion, limit=plan.limit, filter=flt, with_payload=True,
    )
    return [fused, *channels] if plan.with_channel_hits else [fused]
