"""Running an indexing job end to end: open the source and the target, run, close, report."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path

from engine.client import MmrecClient
from engine.config import EngineConfig
from engine.domain import InvalidInput
from engine.runtime.engine import Engine
from indexers.checkpoint import job_files
from indexers.fetch import FetchOptions
from indexers.pipeline import IndexJob, JobOptions, JobSummary
from indexers.ray_job import RayIndexJob, RayOptions
from indexers.sources import MAX_ROW_BYTES, open_source
from indexers.targets import ServiceTarget, StoreTarget, Target


@contextlib.contextmanager
def open_target(config: EngineConfig, fetch: FetchOptions, service: str | None,
                engine: Engine | None = None, *, api_key: str | None = None,
                tls_ca: Path | None = None) -> Iterator[Target]:
    """The job's destination: a running service when ``service`` is an address, else the store.

    With the store target the job owns the data dir (an EdgeStore is locked by
    one process), so no service may hold it meanwhile; ``engine`` may be passed
    to reuse one already loaded. ``api_key`` and ``tls_ca`` reach a service with auth on
    (a write key for the items' tenants) and TLS.
    """
    if service:
        with MmrecClient(service, timeout=600, api_key=api_key,
                         root_certificates=tls_ca) as client:
            client.wait_ready(timeout=60)
            yield ServiceTarget(client, fetch)
        return
    owned = engine is None
    engine = engine or Engine.from_config(config, load_reranker=False)
    try:
        yield StoreTarget(engine, fetch)
    finally:
        if owned:
            engine.close()


def run_index_job(
    config: EngineConfig,
    source_path: Path,
    *,
    options: JobOptions | None = None,
    fetch: FetchOptions | None = None,
    service: str | None = None,
    source_format: str | None = None,
    dead_letter: Path | None = None,
    checkpoint_dir: Path | None = None,
    engine: Engine | None = None,
    max_row_bytes: int = MAX_ROW_BYTES,
    schema: Mapping[str, str] | None = None,
    api_key: str | None = None,
    tls_ca: Path | None = None,
    ray: RayOptions | None = None,
) -> JobSummary:
    """Index ``source_path`` into the configured store (or a service) and return the summary.

    The checkpoint and the dead-letter file of each catalog live in
    ``DATA_DIR/jobs/`` (``.mmrec/jobs/`` for a service target) unless given. ``fetch``
    defaults to the service's image size limit (``service.limits.max_image_bytes``), so a job
    and an UpsertItems call accept the same images; its ``allow_outside_paths`` also
    lets a folder's captions lie outside it. ``max_row_bytes`` and ``schema`` (CSV column
    types) go to the reader (``indexers.sources.open_source``).

    ``ray`` runs the job on Ray Data (``indexers.ray_job``): it needs a target many
    processes can write to, a service or a Qdrant server (``store.url``).
    """
    if ray is not None and not service and config.store.url is None:
        raise InvalidInput(
            f"--ray writes from several processes, and the embedded store in "
            f"{config.store.data_dir} is locked by one: index through a running service "
            "(`mmrec serve`, then --service HOST:PORT) or into a Qdrant server (store.url), "
            "or leave out --ray")
    fetch = fetch or FetchOptions(max_bytes=config.service.limits.max_image_bytes)
    source = open_source(source_path, format=source_format, max_row_bytes=max_row_bytes,
                         schema=schema, allow_outside_paths=fetch.allow_outside_paths)
    jobs = checkpoint_dir or (Path(".mmrec/jobs") if service else config.store.data_dir / "jobs")
    checkpoint_file, default_letters = job_files(jobs, source.path)
    letters = dead_letter or default_letters
    with open_target(config, fetch, service, engine, api_key=api_key, tls_ca=tls_ca) as target:
        if ray is None:
            return IndexJob(source, target, checkpoint_file=checkpoint_file,
                            dead_letter=letters, options=options).run()
        # Each actor opens its own target the same way (after the driver's: a server store's
        # collection is created once, before any actor starts).
        targets = functools.partial(open_target, config, fetch, service, api_key=api_key,
                                    tls_ca=tls_ca)
        return RayIndexJob(source, target, targets, checkpoint_file=checkpoint_file,
                           dead_letter=letters, options=options, ray=ray).run()
