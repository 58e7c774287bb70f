"""The HTTP protocol ``ddim serve`` runs on: uvicorn's h11 protocol with a deadline on a
request's headers.

uvicorn closes an idle connection after its keep-alive timeout, but a client that trickles
a request's head a byte at a time keeps it open for as long as it likes (and so a server
slot). :func:`with_header_deadline` gives every request line and its headers a few seconds
to arrive, from the connection's start or the end of the previous answer; then the
connection is closed, and that is logged in one line.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("ddim.serve")

#: Seconds a request's head may take to arrive.
HEADER_SECONDS = 5.0


def with_header_deadline(seconds: float = HEADER_SECONDS) -> type[H11Protocol]:
    """uvicorn's h11 protocol closing a connection whose next request head has not arrived
    ``seconds`` after the connection opened or the last answer ended."""

    class HeaderDeadline(H11Protocol):
        deadline: asyncio.TimerHandle | None = None
        started: object = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.arm()

        def arm(self) -> None:
            self.disarm()
            self.started = self.cycle
            self.deadline = self.loop.call_later(seconds, self.expire)

        def disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def expire(self) -> None:
            if self.cycle is self.started and not self.transport.is_closing():
                log.warning("closed a connection whose request head took over %g s", seconds)
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not self.started:  # a request's head has arrived
                self.disarm()

        def on_response_complete(self) -> None:
            self.arm()  # before a pipelined request's head is read
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self.disarm()
            super().connection_lost(exc)

    return HeaderDeadline
