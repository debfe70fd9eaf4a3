"""Micro-batching: concurrent requests share one model call.

A request waits in a queue; the worker takes the first waiting request, gathers those that
arrive within ``max_wait_ms`` (up to ``max_batch``), runs ``fn`` on all of them in one call
on the model's thread, and hands each caller its own result. While a call runs, new
requests queue up and form the next batch, so under load batches grow and throughput rises
instead of every request waiting for one model call of its own.

The queue is bounded: past ``max_queue`` waiting requests ``submit`` raises ``Busy`` at
once (the server answers 503 with Retry-After). A caller that stops waiting (a timeout)
leaves its request in the queue, and the worker skips it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any


class Busy(Exception):
    """The queue is full; try again after ``retry_after`` seconds."""

    def __init__(self, name: str, limit: int, retry_after: int = 1) -> None:
        super().__init__(f"the server is busy: {limit} {name} requests are already waiting; "
                         f"try again in {retry_after} s")
        self.retry_after = retry_after


class MicroBatcher:
    def __init__(self, fn: Callable[[list], Sequence], *, name: str = "model",
                 max_batch: int = 16, max_wait_ms: float = 5.0, max_queue: int = 64,
                 retry_after_s: int = 1, executor: Executor | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be at least 1, max_wait_ms >= 0")
        self.fn, self.name, self.retry_after_s = fn, name, retry_after_s
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix=name)
        self.pending = 0                       # submitted and not yet answered
        self.batch_sizes: Counter[int] = Counter()  # model calls by batch size
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def admit(self) -> None:
        """Raise ``Busy`` now if a request would be refused: a caller can check before it
        reads a request's body, so a flood costs little more than its headers."""
        if self.pending >= self.max_queue:
            raise Busy(self.name, self.max_queue, self.retry_after_s)

    async def submit(self, item: Any) -> Any:
        """``fn([..., item, ...])``'s entry for ``item``; raises what ``fn`` raised."""
        self.admit()
        self._start()
        future = asyncio.get_running_loop().create_future()
        self.pending += 1
        try:
            self._queue.put_nowait((item, future))
            return await future
        finally:
            self.pending -= 1

    def _start(self) -> None:
        if self._worker is None or self._worker.done():
            self._queue = self._queue or asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def _gather(self) -> list[tuple[Any, asyncio.Future]]:
        """The first waiting request and those that come within ``max_wait`` of it."""
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return [(item, future) for item, future in batch if not future.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            self.batch_sizes[len(batch)] += 1
            try:
                results = await loop.run_in_executor(self.executor, self.fn,
                                                     [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{self.name}: {len(results)} results for "
                                       f"{len(batch)} requests")
            except Exception as err:  # every caller of the batch learns what went wrong
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
