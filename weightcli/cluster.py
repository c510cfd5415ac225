"""Batch runs on a Dask cluster (``--executor dask``): one task per model.

The tasks are the same calls the local worker processes make (a model's whole run,
returning its :class:`~weightcli.batch.Outcome`), so results, errors and exit codes
are the same wherever a model ran. Outcomes come back in input order. A worker that
dies fails the model it was running, with a clear line, and the others go on: the
cluster this module starts has the scheduler retry no task, and a model whose worker
died is run once more by itself: a model that kills its worker again is failed, one
that only shared the worker completes. An existing cluster applies its own retry
policy (``distributed.scheduler.allowed-failures``) before that.

Needs the ``dask`` extra (``pip install 'weightcli[dask]'``); workers of an existing
cluster need weightcli installed, and the inputs at the same paths or URLs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from weightcli.errors import UsageError

OutcomeT = TypeVar("OutcomeT")  # an outcome (weightcli.batch.Outcome)

# Seconds to reach an existing scheduler before giving up with one line.
CONNECT_TIMEOUT = 10


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise UsageError.naming(
            "{executor} dask needs Dask: pip install 'weightcli[dask]'"
        ) from exc
    return distributed


def run_on_dask(
    call: Callable[..., OutcomeT],
    task: Callable[[Any], Any],
    items: Sequence[Any],
    debug: bool,
    spell: Callable[[str], str],
    scheduler: str | None,
    jobs: int,
    failed: Callable[[Any, str, float], OutcomeT],
) -> Iterator[OutcomeT]:
    """``call(task, item, debug, spell)`` for every item on the cluster at ``scheduler``
    (a ``distributed.LocalCluster`` of ``jobs`` single-threaded worker processes when
    None), yielding outcomes in input order; ``failed(item, error, seconds)`` makes the
    outcome of a model whose run the cluster lost."""
    distributed = _import_distributed()
    import dask

    cluster = None
    client = None
    try:
        try:
            if scheduler is None:
                with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                    cluster = distributed.LocalCluster(
                        n_workers=max(1, jobs),
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address=None,
                    )
                client = distributed.Client(cluster)
            else:
                client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            where = scheduler or "a local cluster"
            raise UsageError(f"cannot reach the Dask scheduler at {where}: {exc}") from exc
        run_id = uuid.uuid4().hex[:8]
        started = time.perf_counter()
        futures = [
            client.submit(call, task, it, debug, spell, key=f"weightcli-{run_id}-{i}", pure=False)
            for i, it in enumerate(items)
        ]
        for i, (it, fut) in enumerate(zip(items, futures, strict=True)):
            try:
                yield fut.result()
            except distributed.KilledWorker:
                # The worker died while this model was on it: the model's own fault, or
                # another model's on the same worker. Run it once more, alone: a model
                # that kills its worker again is failed; a bystander completes.
                again = client.submit(
                    call, task, it, debug, spell, key=f"weightcli-{run_id}-{i}-again", pure=False
                )
                try:
                    yield again.result()
                except distributed.KilledWorker:
                    why = f"{it.label}: the Dask worker running this model died (twice)"
                    yield failed(it, why, time.perf_counter() - started)
            except (OSError, TimeoutError) as exc:  # the cluster went away
                why = f"{it.label}: lost the Dask cluster: {exc}"
                yield failed(it, why, time.perf_counter() - started)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
