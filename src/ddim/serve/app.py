"""The ASGI application of ``ddim serve`` (Starlette): one page and a small JSON API.

- ``GET /``, ``/static/app.js``, ``/static/style.css``: the page, from the package (a
  fixed table: no request path reaches the file system);
- ``GET /api/info``: the model (classes, image size, timesteps), solvers and limits;
- ``POST /api/sample|interpolate|edit|inpaint|reconstruct``: a JSON object of options
  (:mod:`ddim.serve.requests`); the answer streams newline-delimited JSON progress events
  and ends with ``{"result": ...}`` (:mod:`ddim.serve.runner`).

A bad request is answered 4xx with ``{"error": "..."}`` before any work starts; a full
queue 503; an unexpected failure 500 with a one-line message, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ddim.exits import one_line
from ddim.guidance import num_classes
from ddim.names import INPAINT_METHODS, NAMED_MASKS
from ddim.precision import choose
from ddim.sampling import own_plan
from ddim.serve import requests, work
from ddim.serve.guard import Guard
from ddim.serve.requests import BadRequest, Limits, ModelFacts
from ddim.serve.runner import Runner
from ddim.serve.work import Served
from ddim.solvers import FACTS

log = logging.getLogger("ddim.serve")

#: The page's files: URL path -> (package file, media type).
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
#: Everything the page loads comes from this server; images are data URLs.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}

Parse = Callable[[dict[str, Any], ModelFacts, Limits], Any]
MakeJob = Callable[[Served, Any], tuple[int, work.Job]]
JOBS: dict[str, tuple[Parse, MakeJob]] = {
    "sample": (requests.sample_request, work.sample_job),
    "interpolate": (requests.interpolate_request, work.interpolate_job),
    "edit": (requests.edit_request, work.edit_job),
    "inpaint": (requests.inpaint_request, work.inpaint_job),
    "reconstruct": (requests.reconstruct_request, work.reconstruct_job),
}


def facts_of(served: Served) -> ModelFacts:
    """The :class:`~ddim.serve.requests.ModelFacts` requests are checked against:
    ``served``'s classes, timesteps, channels and image size, and a distilled student's own
    number of steps."""
    c, size, _ = served.shape
    plan = own_plan(served.model)
    return ModelFacts(num_classes(served.model), served.schedule.num_timesteps, c, size,
                      None if plan is None else len(plan))  # fmt: skip


def create_app(
    served: Served,
    limits: Limits | None = None,
    max_waiting: int = 32,
    allowed_hosts: Sequence[str] = (),
) -> Guard:
    """The application serving ``served`` within ``limits`` (default :class:`Limits`), with
    at most ``max_waiting`` jobs queued behind the running one, answering requests for the
    loopback names and ``allowed_hosts`` only (:mod:`ddim.serve.guard`)."""
    limits = limits or Limits()
    facts = facts_of(served)
    runner = Runner(max_waiting)
    pages = {
        path: (resources.files("ddim.serve").joinpath("static", name).read_bytes(), media)
        for path, (name, media) in ASSETS.items()
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        runner.shutdown()

    @contained
    async def asset(request: Request) -> Response:
        body, media = pages[request.url.path]
        return Response(body, media_type=media, headers=SECURITY_HEADERS)

    @contained
    async def info(request: Request) -> Response:
        return JSONResponse({
            "model": served.name,
            "classes": facts.num_classes,
            "image_size": facts.image_size,
            "channels": facts.channels,
            "num_timesteps": facts.num_timesteps,
            "solvers": {name: f.min_steps for name, f in FACTS.items()},
            "inpaint_methods": list(INPAINT_METHODS),
            "encoding_solvers": list(requests.ROUTES["reconstruct"].solvers or ()),
            "defaults": {route: requests.route_defaults(route, facts) for route in JOBS},
            "sampling_plan": facts.plan_steps and list(own_plan(served.model) or ()),
            "named_masks": list(NAMED_MASKS),
            "limits": vars(limits),
            "device": str(served.device),
            "precision": choose(served.precision, served.device)[0],
            "queue": runner.held,
        })  # fmt: skip

    def endpoint(parse: Parse, make: MakeJob) -> Callable[[Request], Any]:
        async def run(request: Request) -> Response:
            req = parse(await read_json(request, limits), facts, limits)
            try:
                total, job = make(served, req)
            except ValueError as e:  # what the library refuses of a combination of options
                raise BadRequest(str(e).strip().splitlines()[0]) from None
            stream = runner.submit(work.timed(job), total)
            if stream is None:
                return error(503, f"busy: {runner.held} requests are queued; try again shortly")
            return StreamingResponse(stream, media_type="application/x-ndjson")

        return contained(run)

    routes = [Route(path, asset, methods=["GET"]) for path in ASSETS]
    routes.append(Route("/api/info", info, methods=["GET"]))
    routes += [
        Route(f"/api/{name}", endpoint(*pair), methods=["POST"]) for name, pair in JOBS.items()
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            BadRequest: _bad_request,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
    app.state.runner = runner
    return Guard(app, allowed_hosts)


def contained(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Any]:
    """``handler`` answering an unexpected failure itself, as a 500 with a one-line JSON
    message (logged in one line): an exception that left it would reach the ASGI server,
    which prints a traceback and closes the connection, requests pipelined behind it
    unanswered."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except (BadRequest, HTTPException):
            raise
        except Exception as e:  # noqa: BLE001 - every other failure is the same 500
            log.error("%s %s failed: %s", request.method, request.url.path, one_line(repr(e)))
            return error(500, "the server failed on this request; see its log")

    return run


async def read_json(request: Request, limits: Limits) -> dict[str, Any]:
    """The request body as a JSON object, read no further than ``limits.max_body_bytes`` and
    for no longer than ``limits.body_seconds`` (408); a client that leaves half-way is
    logged in one line."""
    max_bytes = limits.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BadRequest(f"the request is {declared} bytes; the limit is {max_bytes}", 413)

    async def whole() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise BadRequest(f"the request is over the limit of {max_bytes} bytes", 413)
        return bytes(body)

    try:
        body = await asyncio.wait_for(whole(), limits.body_seconds)
    except asyncio.TimeoutError:
        raise BadRequest(f"the request body took over {limits.body_seconds:g} s", 408) from None
    except ClientDisconnect:
        log.warning("%s %s: the client left before its request arrived", request.method,
                    request.url.path)  # fmt: skip
        raise BadRequest("the client left before its request arrived") from None
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        raise BadRequest("the request body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def error(status: int, message: str) -> JSONResponse:
    """A JSON answer ``{"error": message}`` with HTTP status ``status``."""
    return JSONResponse({"error": message}, status_code=status)


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    return error(exc.status, str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    answer = error(exc.status_code, str(exc.detail))
    answer.headers.update(exc.headers or {})  # the Allow of a 405
    return answer


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed: %r", request.method, request.url.path, exc)
    return error(500, "the server failed on this request; see its log")
