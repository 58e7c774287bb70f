"""One job at a time: the queue in front of the served model.

Jobs run one after another on a single worker thread, so two requests never hold two
batches in memory; at most ``max_waiting`` more may wait, and a request beyond that is
refused (503) instead of queued. A job reports progress as newline-delimited JSON events
(``{"progress": k, "total": n}`` ..., then ``{"result": ...}`` or ``{"error": ...}``),
streamed to the client as they happen. A job whose client has gone stops at its next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ddim.serve.work import Job

log = logging.getLogger("ddim.serve")


class Cancelled(Exception):
    """Raised inside a job whose client has disconnected."""


class Runner:
    """A single worker thread and the count of jobs it holds (running and waiting)."""

    def __init__(self, max_waiting: int = 32) -> None:
        self.max_waiting = max_waiting
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ddim-serve")
        self._lock = threading.Lock()
        self._held = 0

    @property
    def held(self) -> int:
        """Jobs running or waiting now."""
        with self._lock:
            return self._held

    def submit(self, job: Job, total: int) -> AsyncIterator[str] | None:
        """Queue ``job`` (``total`` steps) and return its event stream, or ``None`` when
        the queue is full. The job runs whether or not the stream is read."""
        with self._lock:
            if self._held > self.max_waiting:
                return None
            self._held += 1
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        gone = threading.Event()

        def emit(event: dict[str, Any] | None) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        def work() -> None:
            done = 0

            def tick() -> None:
                nonlocal done
                if gone.is_set():
                    raise Cancelled
                done += 1
                emit({"progress": done, "total": total})

            try:
                if gone.is_set():
                    raise Cancelled
                emit({"result": job(tick)})
            except Cancelled:
                pass
            except ValueError as e:
                emit({"error": str(e).strip().splitlines()[0] if str(e).strip() else "bad request"})
            except Exception:
                log.exception("a job failed")
                emit({"error": "the job failed on the server; see its log"})
            finally:
                with self._lock:
                    self._held -= 1
                emit(None)

        emit({"queued": self.held - 1})
        self._pool.submit(work)
        return self._stream(events, gone)

    @staticmethod
    async def _stream(
        events: asyncio.Queue[dict[str, Any] | None], gone: threading.Event
    ) -> AsyncIterator[str]:
        try:
            while (event := await events.get()) is not None:
                yield json.dumps(event) + "\n"
        finally:
            gone.set()

    def shutdown(self) -> None:
        """Stop taking jobs: those waiting are cancelled, the running one is not waited
        for."""
        self._pool.shutdown(wait=False, cancel_futures=True)
