"""Dynamic batching: concurrent requests coalesced into one backend call.

Requests wait in a queue. The batcher's task takes the first one, then keeps adding waiting requests
while the batch holds at most ``max_batch`` images and ``max_delay_s`` has not passed since it took
the first, and only while company is likely: more requests are on their way (being read and
decoded: ``arriving``) or the last batch held more than one request. So under load batches fill up,
and a lone client's requests never wait for company that is not coming. The batch runs as ONE ``Runtime.predict`` call in a single worker thread (a request larger
than ``max_batch`` runs alone, in chunks of ``max_batch``) and the scores are split back. The version
is chosen when a batch starts (a hot swap happens between batches), so every answer names the version
that produced it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from memo_edge.runtime.predict import Runtime
from memo_edge.serve.state import ServiceState

__all__ = ["Batcher", "BatchResult"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    version: int
    class_names: tuple[str, ...]
    scores: np.ndarray  # [n, classes] softmax


@dataclass
class _Job:
    images: np.ndarray
    future: asyncio.Future[BatchResult]


class Batcher:
    def __init__(self, state: ServiceState, *, max_batch: int = 32, max_delay_s: float = 0.005,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        if max_batch < 1 or max_delay_s < 0:
            raise ValueError(f"need max_batch >= 1 and max_delay_s >= 0, got {max_batch} and {max_delay_s}")
        self.state, self.max_batch, self.max_delay_s = state, max_batch, max_delay_s
        self.on_batch = on_batch  # (images, requests) of every backend call
        self._pending: collections.deque[_Job] = collections.deque()
        self._arriving = 0  # requests being read and decoded, not yet submitted
        self._busy = False  # the last batch coalesced requests: more are likely to come
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memo-edge-predict")

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around reading and decoding a request that will be submitted: a batch waits for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            if self._wake is not None:
                self._wake.set()  # a batch waiting for this one re-checks (it may have failed)

    async def submit(self, images: np.ndarray) -> BatchResult:
        """Scores for ``images`` (uint8 [n,H,W,C], already checked), from one version."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:  # started in the serving loop
            self._loop, self._wake = loop, asyncio.Event()
            self._task = loop.create_task(self._run())
        job = _Job(images, loop.create_future())
        self._pending.append(job)
        assert self._wake is not None
        self._wake.set()
        return await job.future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the service is shutting down"))
        self._pending.clear()
        self._pool.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            jobs = [self._pending.popleft()]
            size = len(jobs[0].images)
            deadline = loop.time() + self.max_delay_s
            while size < self.max_batch:
                if self._pending:
                    if size + len(self._pending[0].images) > self.max_batch:
                        break  # it starts the next batch
                    jobs.append(self._pending.popleft())
                    size += len(jobs[-1].images)
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or (self._arriving == 0 and not self._busy):
                    break  # the delay is spent, or no company is likely
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            self._busy = len(jobs) > 1
            await self.state.maybe_refresh()
            await self._run_batch(loop, jobs, size)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], size: int) -> None:
        rt = self.state.runtime  # the version of this whole batch, even if a swap lands meanwhile
        assert rt is not None
        batch = jobs[0].images if len(jobs) == 1 else np.concatenate([j.images for j in jobs])
        try:
            scores = await loop.run_in_executor(self._pool, self._predict, rt, batch)
        except Exception as exc:  # noqa: BLE001 - answered to every request of the batch
            log.exception("a batch of %d images failed", size)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(size, len(jobs))
        m = rt.package.manifest
        start = 0
        for job in jobs:
            n = len(job.images)
            if not job.future.done():  # a client that went away cancelled its future
                job.future.set_result(BatchResult(m.version, m.class_names, scores[start:start + n]))
            start += n

    def _predict(self, rt: Runtime, batch: np.ndarray) -> np.ndarray:
        parts = [rt.predict(batch[i:i + self.max_batch])[1] for i in range(0, len(batch), self.max_batch)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
