"""What every per-image stage shares: decoding in DataLoader workers, finishing outputs on threads.

edges, segcache and colorize all read files in worker processes one item at a time (items differ in
size, so batches are formed afterwards from equal shapes), run a network in batches, and hand the
per-image finishing work (post-processing, PNG writing) to a thread pool whose futures are counted here.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable
from typing import Any

from torch.utils.data import DataLoader, Dataset

from advseg_cli.interrupts import leave_stop_signals_to_the_main_process
from advseg_cli.runrecord import RunRecord


def keep_as_is(item: Any) -> Any:
    """DataLoader collate that leaves items (NumPy arrays, dataclasses) alone; module level so workers pickle it."""
    return item


def iterate_items(dataset: Dataset, workers: int) -> Iterable[Any]:
    """The dataset's items in order, decoded by ``workers`` processes (0: in this process)."""
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, collate_fn=keep_as_is,
                      persistent_workers=False, prefetch_factor=4 if workers else None,
                      worker_init_fn=leave_stop_signals_to_the_main_process)


class InlineExecutor:
    """An executor that runs each job at once in the calling thread (same interface as a pool).

    Used where the model already occupies every core (CPU inference): finishing threads would only
    oversubscribe the cores and stall the model's OpenMP threads.
    """

    def __enter__(self) -> InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, function: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # delivered through future.result(), like a pool's
            future.set_exception(exc)
        return future


def collect_finished(pending: list[concurrent.futures.Future], record: RunRecord, *, block: bool,
                     wait_all: bool = False) -> int:
    """Count finished output futures as done (re-raising their errors); returns how many finished.

    ``block`` waits for at least one (or, with ``wait_all``, every) future first, which bounds the
    memory held by results waiting to be written.
    """
    if block and pending:
        concurrent.futures.wait(pending, return_when=concurrent.futures.ALL_COMPLETED if wait_all
                                else concurrent.futures.FIRST_COMPLETED)
    finished = [future for future in pending if future.done()]
    for future in finished:
        future.result()
        pending.remove(future)
        record.counts["done"] += 1
    return len(finished)
