"""``ddim serve``: the local web page (:mod:`ddim.serve`), on a real ASGI server (uvicorn)."""

from __future__ import annotations

import socket
import sys

import click

from ddim.cli import guide_options, options
from ddim.cli.options import count_option, option


@click.command("serve", short_help="Serve a local web page to sample, interpolate and edit.")
@option(
    "--ckpt",
    default=guide_options.CONDITIONAL_MODEL,
    metavar="PATH",
    help="the model to serve: a ddim .safetensors checkpoint, a diffusers folder, or a "
    "bundled model name",
)
@option("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every network)")
@option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="also answer requests that name this server NAME (repeatable); loopback names and "
    "--host are always answered, any other Host is refused (DNS rebinding)",
)
@option("--port", type=click.IntRange(0, 65535), default=8000, help="the port (0: any free one)")
@count_option("--max-queue", default=32, help="requests that may wait behind the running one")
@options.device_option
@options.precision_option
def serve_command(
    ckpt: str,
    host: str,
    allow_hosts: tuple[str, ...],
    port: int,
    max_queue: int,
    device: object,
    precision: str,
) -> None:
    """Serve one model on a local web page: sample (with a class and guidance for a
    conditional model), interpolate between seeds, draw and edit (SDEdit, inpainting),
    encode and decode. Requests run one at a time; stop with Ctrl-C."""
    try:
        import uvicorn

        from ddim.serve.app import create_app
        from ddim.serve.protocol import with_header_deadline
        from ddim.serve.work import Served
    except ImportError as e:
        raise click.UsageError(
            f"ddim serve needs the serve extra ({e.name} is missing): pip install 'ddim[serve]'"
        ) from None
    from ddim.sampling import SamplerOptions

    model, schedule = options.load_model(ckpt, device)
    # the measured speed choice of `ddim sample` for a page's largest job (its batch of 64)
    job = SamplerOptions(precision=precision)
    auto = options.auto_speed(model, schedule, job, 64, 64, device, (None, None))
    served = Served(ckpt, auto.model, schedule, device, precision)
    app = create_app(served, max_waiting=max_queue, allowed_hosts=(host, *allow_hosts))
    if host in ("0.0.0.0", "::", ""):
        click.echo(
            f"warning: --host {host} serves this page, and runs its jobs, for anyone who can "
            f"reach this machine on port {port}; requests must still name an allowed host",
            err=True,
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise click.UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"ddim serve: {ckpt} on http://{shown}:{bound}/ (Ctrl-C stops)")
    options.report_speed(auto)
    sys.stdout.flush()  # the URL before the server blocks, also into a pipe
    # idle connections are closed after 5 s, a request head must arrive within 5 s
    # (ddim.serve.protocol) and its body within 10 s (ddim.serve.app)
    config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=5,
                            http=with_header_deadline())  # fmt: skip
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
