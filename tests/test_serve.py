"""``ddim serve``'s API through an in-process client, on the tiny conditional U-Net of
``ckpts``: each request gives the bytes of the matching CLI command's PNG, streams one
progress event a step, and a bad request gets a 4xx JSON message before any work starts."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import ok

from ddim import workflows
from ddim.formats.checkpoint import load_pretrained
from ddim.serve.requests import Limits
from ddim.serve.runner import Runner

starlette = pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from ddim.serve.app import create_app  # noqa: E402
from ddim.serve.work import Served  # noqa: E402


def served(path: Path) -> Served:
    model, schedule = load_pretrained(path)
    return Served(str(path), model, schedule, torch.device("cpu"), "auto")


@pytest.fixture(scope="module")
def client(ckpts) -> TestClient:
    return TestClient(create_app(served(ckpts["cond"]), allowed_hosts=("testserver",)))


@pytest.fixture(scope="module")
def drawing(ckpts) -> tuple[str, Path]:
    """An 8 x 8 grayscale PNG, as base64 text and as a file for the CLI."""
    pixels = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8)
    path = Path(ckpts["images"]).parent / "drawing.png"
    Image.fromarray(pixels).save(path)
    return base64.b64encode(path.read_bytes()).decode(), path


JSON = {"content-type": "application/json"}


def events(response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def result(client: TestClient, name: str, body: dict) -> dict:
    stream = events(client.post(f"/api/{name}", json=body))
    assert "result" in stream[-1], stream[-1]
    progress = [e["progress"] for e in stream if "progress" in e]
    totals = {e["total"] for e in stream if "progress" in e}
    assert progress == list(range(1, len(progress) + 1)) and totals == {len(progress)}
    return stream[-1]["result"]


def png_of(text: str) -> bytes:
    return base64.b64decode(text)


def test_the_page_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js">' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "runJob" in client.get("/static/app.js").text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    info = client.get("/api/info").json()
    assert (info["classes"], info["image_size"], info["channels"]) == (3, 8, 1)
    assert info["precision"] == "fp32" and info["limits"]["max_images"] == 64


@pytest.mark.parametrize(
    ("body", "args"),
    [
        ({"n": 5, "steps": 4, "seed": 7, "class": 2, "guidance": 3.0},
         ["-n", 5, "--steps", 4, "--seed", 7, "--class", 2, "--guidance", 3]),
        ({"n": 3, "steps": 5, "seed": 1, "solver": "dpmpp-2m"},
         ["-n", 3, "--steps", 5, "--seed", 1, "--solver", "dpmpp-2m"]),
        ({"n": 2, "steps": 4, "seed": 11, "eta": 1.0},
         ["-n", 2, "--steps", 4, "--seed", 11, "--eta", 1]),
        ({"n": 7, "steps": 3, "class": "all", "guidance": 2.0},
         ["-n", 7, "--steps", 3, "--class", "all", "--guidance", 2]),
    ],
)  # fmt: skip
def test_sample_gives_the_cli_grid_byte_for_byte(client, ckpts, tmp_path, body, args) -> None:
    got = result(client, "sample", body)
    out = tmp_path / "cli.png"
    ok("sample", "--ckpt", ckpts["cond"], *args, "--out", out)
    assert png_of(got["image"]) == out.read_bytes()
    # the official uniform spacing: range(0, 1000, 1000 // S), so S = 3 gives 4 timesteps
    assert got["model_calls"] == {3: 4, 4: 4, 5: 5}[body["steps"]] and got["seconds"] >= 0


def test_interpolation_gives_the_cli_strip_and_its_frames(client, ckpts, tmp_path) -> None:
    got = result(client, "interpolate", {"seed_a": 4, "seed_b": 9, "frames": 4, "steps": 3})
    out = tmp_path / "cli.png"
    ok("interpolate", "--ckpt", ckpts["cond"], "--seeds", 4, 9, "--frames", 4, "--steps", 3,
       "--out", out)  # fmt: skip
    assert png_of(got["strip"]) == out.read_bytes()
    frames = [np.asarray(Image.open(io.BytesIO(png_of(f)))) for f in got["frames"]]
    strip = np.asarray(Image.open(out))
    for i, frame in enumerate(frames):  # frame i is tile i of the strip
        assert np.array_equal(frame, strip[2:10, 2 + 10 * i : 10 + 10 * i])


def test_sdedit_gives_the_cli_image(client, ckpts, drawing, tmp_path) -> None:
    text, path = drawing
    got = result(client, "edit", {"image": "data:image/png;base64," + text, "strength": 0.6,
                                  "steps": 10, "seed": 3, "class": 1, "guidance": 2.0})  # fmt: skip
    out = tmp_path / "cli.png"
    ok("edit", path, "--ckpt", ckpts["cond"], "--strength", 0.6, "--steps", 10, "--seed", 3,
       "--class", 1, "--guidance", 2, "--out", out)  # fmt: skip
    assert png_of(got["image"]) == out.read_bytes()
    assert got["model_calls"] == 7  # t0 = 599 and the six of 0, 100, ..., 500 below it


@pytest.mark.parametrize("method", ["replace", "repaint", "dps", "ddnm"])
def test_inpainting_gives_the_cli_image_and_keeps_the_known_pixels(
    client, ckpts, drawing, tmp_path, method
) -> None:
    text, path = drawing
    got = result(client, "inpaint", {"image": text, "mask": "bottom-half", "method": method,
                                     "steps": 4, "seed": 2})  # fmt: skip
    out = tmp_path / "cli.png"
    ok("inpaint", path, "--ckpt", ckpts["cond"], "--mask", "bottom-half", "--method", method,
       "--steps", 4, "--seed", 2, "--out", out)  # fmt: skip
    assert png_of(got["image"]) == out.read_bytes()
    image, original = np.asarray(Image.open(out)), np.asarray(Image.open(path))
    assert np.array_equal(image[:4], original[:4])
    # 4 steps of T = 100 (t = 75, 50, 25, 0); repaint and ddnm go 2 steps back up and down
    # 14 more times after point 2 (t = 25 < T / 2)
    assert got["model_calls"] == (4 + 14 * 2 if method in ("repaint", "ddnm") else 4)
    assert got["grad_passes"] == (4 if method == "dps" else 0)


def test_inpainting_takes_a_drawn_mask(client, drawing) -> None:
    text, _ = drawing
    keep = np.full((8, 8), 255, dtype=np.uint8)
    keep[2:5, 3:6] = 0
    buffer = io.BytesIO()
    Image.fromarray(keep).convert("RGBA").save(buffer, format="PNG")  # as a canvas sends it
    mask = base64.b64encode(buffer.getvalue()).decode()
    got = result(client, "inpaint", {"image": text, "mask": mask, "steps": 3, "method": "replace"})
    image = np.asarray(Image.open(io.BytesIO(png_of(got["image"]))))
    original = np.asarray(Image.open(io.BytesIO(png_of(text))))
    assert np.array_equal(image[keep == 255], original[keep == 255])
    assert not np.array_equal(image[keep == 0], original[keep == 0])


def test_reconstruction_is_the_library_s(client, ckpts, drawing) -> None:
    text, path = drawing
    got = result(client, "reconstruct", {"image": text, "steps": 5})
    model, schedule = load_pretrained(ckpts["cond"])
    x0 = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 127.5 - 1)[None, None]
    expected = workflows.reconstruct(model, schedule, x0, options=workflows.DEFAULTS.__class__(
        steps=5, precision="auto"))  # fmt: skip
    assert got["mse"] == pytest.approx(float(expected.mse[0]), rel=1e-12)
    assert got["model_calls"] == 10


def test_a_fixed_point_encoding_is_the_library_s(client, ckpts, drawing) -> None:
    """``fixed_point: K`` is ``ddim reconstruct --fixed-point K``: the library's round trip,
    K extra calls a step, and the largest residual of the steps' equations."""
    text, path = drawing
    got = result(client, "reconstruct", {"image": text, "steps": 5, "fixed_point": 3})
    model, schedule = load_pretrained(ckpts["cond"])
    x0 = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 127.5 - 1)[None, None]
    residuals: list[float] = []
    expected = workflows.reconstruct(model, schedule, x0, options=workflows.DEFAULTS.__class__(
        steps=5, precision="auto", fixed_point=3),
        callback=lambda s: s.residual is None or residuals.append(s.residual))  # fmt: skip
    assert got["mse"] == pytest.approx(float(expected.mse[0]), rel=1e-12)
    assert got["residual"] == pytest.approx(max(residuals), rel=1e-12)
    assert got["model_calls"] == 10 + 3 * 5
    assert result(client, "reconstruct", {"image": text, "steps": 5})["residual"] is None


@pytest.mark.parametrize(("solver", "calls"), [("edict", 4 * 5), ("bdia", 2 * 5 - 1)])
def test_the_encode_tab_offers_exact_encodings(client, drawing, solver, calls) -> None:
    """The reconstruct route takes DDIM and the exact solvers (and only those): an exact
    encoding decodes the drawing to float rounding."""
    text, _ = drawing
    assert client.get("/api/info").json()["encoding_solvers"] == ["ddim", "edict", "bdia"]
    got = result(client, "reconstruct", {"image": text, "steps": 5, "solver": solver})
    assert got["mse"] < 1e-10 and got["model_calls"] == calls
    refused = client.post("/api/reconstruct", json={"image": text, "solver": "heun"})
    assert refused.status_code == 400
    assert "solver must be one of ddim, edict, bdia" in refused.json()["error"]


def bad_png(size: int) -> str:
    buffer = io.BytesIO()
    Image.new("L", (size, size), 128).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def grey_mask() -> str:
    return bad_png(8)  # 128 everywhere: not binary


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("sample", {"n": 0}, "n must lie in 1..64"),
        ("sample", {"n": 65}, "n must lie in 1..64"),
        ("sample", {"n": "4"}, "n must be an integer"),
        ("sample", {"n": True}, "n must be an integer"),
        ("sample", {"steps": 101}, "steps must lie in 1..100"),  # the tiny model's T
        ("sample", {"eta": -0.5}, "eta must lie in [0.0, 1.0]"),
        ("sample", {"solver": "euler"}, "solver must be one of ddim"),
        ("sample", {"solver": "dpmpp-3m", "steps": 2}, "needs at least 3 steps"),
        ("sample", {"eta": 0.5, "solver": "dpmpp-2m"}, "eta applies to solver 'ddim' only"),
        ("sample", {"class": 3}, "class must lie in 0..2"),
        ("sample", {"class": -1}, "class must lie in 0..2"),
        ("sample", {"guidance": 2}, "guidance needs a class"),
        ("sample", {"class": 1, "guidance": 21}, "guidance must lie in [0.0, 20.0]"),
        ("sample", {"seed": -1}, "seed must lie in"),
        ("sample", {"path": "/etc/passwd"}, "unknown field(s): path"),
        ("sample", {"n": 1, "steps": 1, "mask": [1, 2]}, "unknown field(s): mask (/api/sample"),
        ("interpolate", {"solver": {}, "eta": "NaN"}, "unknown field(s): eta, solver"),
        ("reconstruct", {"seed": 1}, "unknown field(s): seed (/api/reconstruct takes class, "
                                     "fixed_point, guidance, image, solver, steps)"),
        ("reconstruct", {"fixed_point": 101}, "fixed_point must lie in 0..100"),
        ("reconstruct", {"fixed_point": 1.5}, "fixed_point must be an integer"),
        ("reconstruct", {"fixed_point": 2, "solver": "bdia"},
         "fixed_point applies to DDIM's encoding (solver ddim), not bdia"),
        ("interpolate", {"frames": 17}, "frames must lie in 2..16"),
        ("interpolate", {"class": "all"}, "class must be an integer"),
        ("edit", {}, "image must be a PNG"),
        ("edit", {"image": "not base64!"}, "image is not valid base64"),
        ("edit", {"image": base64.b64encode(b"GIF89a....").decode()}, "cannot be read as a PNG"),
        ("edit", {"image": bad_png(28)}, "image is 28x28; the model takes 8x8"),
        ("edit", {"image": bad_png(8), "strength": 0}, "strength must lie in (0.0, 1.0]"),
        ("edit", {"image": bad_png(8), "strength": 1.5}, "strength must lie in (0.0, 1.0]"),
        ("inpaint", {"image": bad_png(8)}, "mask is missing"),
        ("inpaint", {"image": bad_png(8), "mask": "middle"}, "unknown mask 'middle'"),
        ("inpaint", {"image": bad_png(8), "mask": grey_mask()}, "mask is not binary"),
        ("inpaint", {"image": bad_png(8), "mask": "center", "method": "x"}, "method must be one"),
    ],
)  # fmt: skip
def test_bad_requests_get_400_with_a_message(client, name, body, message) -> None:
    response = client.post(f"/api/{name}", json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_each_route_takes_its_fields_with_the_commands_defaults(client) -> None:
    """The defaults the page starts from are the CLI's: the library's sampler options
    (50 steps, eta 0, ddim), inpainting's DDNM at 20 steps, SDEdit's strength 0.6, 10
    frames; each route lists exactly the fields it accepts."""
    from ddim.sampler_options import default_of

    defaults = client.get("/api/info").json()["defaults"]
    assert set(defaults) == {"sample", "interpolate", "edit", "inpaint", "reconstruct"}
    sample = defaults["sample"]
    assert (
        {k: sample[k] for k in ("steps", "eta", "solver", "guidance")}
        == {k: default_of(k) for k in ("steps", "eta", "solver", "guidance")}
        == {"steps": 50, "eta": 0.0, "solver": "ddim", "guidance": None}
    )
    assert (defaults["inpaint"]["method"], defaults["inpaint"]["steps"]) == ("ddnm", 20)
    assert defaults["edit"]["strength"] == 0.6 and defaults["interpolate"]["frames"] == 10
    assert set(defaults["reconstruct"]) == {"image", "steps", "guidance", "class", "solver",
                                            "fixed_point"}  # fmt: skip


def test_malformed_or_oversized_bodies_and_wrong_routes_get_json_errors(client) -> None:
    assert client.post("/api/sample", content=b"{nope", headers=JSON).json() == {
        "error": "the request body is not JSON"
    }
    assert client.post("/api/sample", content=b"[1, 2]", headers=JSON).status_code == 400
    nan = client.post(
        "/api/sample", content=b'{"eta": NaN}', headers=JSON
    )  # Python's json reads NaN
    assert nan.status_code == 400 and nan.json()["error"] == "eta must be a number, got nan"
    huge = client.post("/api/edit", content=b"x" * (Limits().max_body_bytes + 1), headers=JSON)
    assert huge.status_code == 413 and "limit" in huge.json()["error"]
    for response, status in [
        (client.get("/api/sample"), 405),
        (client.get("/api/nothing"), 404),
        (client.get("/static/../app.py"), 404),
        (client.get("/static/index.html"), 404),
    ]:
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"


def test_an_unconditional_model_refuses_a_class(ckpts) -> None:
    client = TestClient(create_app(served(ckpts["plain"]), allowed_hosts=("testserver",)))
    assert client.get("/api/info").json()["classes"] == 0
    response = client.post("/api/sample", json={"class": 0})
    assert response.status_code == 400
    assert response.json() == {"error": "this model is unconditional: leave class out"}


def test_a_failing_job_ends_its_stream_with_a_one_line_error(client, monkeypatch) -> None:
    from ddim.serve import work

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(work.workflows, "generate", broken)
    last = events(client.post("/api/sample", json={"n": 1, "steps": 2}))[-1]
    assert last == {"error": "the job failed on the server; see its log"}


async def read(stream) -> list[dict]:
    return [json.loads(line) async for line in stream]


def test_the_runner_runs_one_job_at_a_time_and_refuses_past_its_queue() -> None:
    async def scenario() -> tuple[list[str], bool]:
        runner = Runner(max_waiting=1)
        release, order = threading.Event(), []

        def job(name: str):
            def run(tick):
                order.append(f"{name} starts")
                if name == "first":
                    release.wait(10)
                tick()
                order.append(f"{name} ends")
                return {"name": name}

            return run

        first, second = runner.submit(job("first"), 1), runner.submit(job("second"), 1)
        refused = runner.submit(job("third"), 1) is None  # one running, one waiting: full
        release.set()
        results = [await read(first), await read(second)]
        assert [r[-1]["result"]["name"] for r in results] == ["first", "second"]
        assert results[1][0] == {"queued": 1}
        runner.shutdown()
        return order, refused

    order, refused = asyncio.run(scenario())
    assert refused
    assert order == ["first starts", "first ends", "second starts", "second ends"]


def test_a_job_stops_when_its_client_leaves() -> None:
    async def scenario() -> int:
        runner = Runner()
        ticks, done = [], threading.Event()

        def run(tick):
            try:
                for i in range(1000):
                    tick()
                    ticks.append(i)
                    time.sleep(0.001)
            finally:
                done.set()
            return {}

        stream = runner.submit(run, 1000)
        async for line in stream:
            if "progress" in json.loads(line):
                break
        await stream.aclose()  # the client went away
        await asyncio.get_running_loop().run_in_executor(None, done.wait, 10)
        assert runner.held == 0
        return len(ticks)

    assert asyncio.run(scenario()) < 1000


def test_ddim_serve_prints_its_url_and_serves(ckpts) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddim.cli", "serve", "--ckpt", str(ckpts["cond"]), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"ddim serve: {ckpts['cond']} on http://127.0.0.1:")
        url = line.split(" on ")[1].split()[0]
        for _ in range(100):
            try:
                with urllib.request.urlopen(url + "api/info", timeout=5) as answer:
                    assert json.load(answer)["classes"] == 3
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the server never answered")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------- hostile probes (issue 40)


def png_with_text_bomb(size: int = 8) -> str:
    """A valid PNG of ``size`` px carrying a zTXt chunk that inflates to 50 MB."""
    buffer = io.BytesIO()
    Image.new("L", (size, size), 128).save(buffer, format="PNG")
    raw = buffer.getvalue()
    data = b"Comment\0\0" + zlib.compress(b"a" * 50_000_000, 9)
    chunk = len(data).to_bytes(4, "big") + b"zTXt" + data
    chunk += zlib.crc32(b"zTXt" + data).to_bytes(4, "big")
    at = raw.index(b"IDAT") - 4  # before the first IDAT chunk
    return base64.b64encode(raw[:at] + chunk + raw[at:]).decode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"image": "data:image/png;base64"}, "image must be a data URL of base64 PNG data"),
        ({"image": "data:"}, "image must be a data URL of base64 PNG data"),
        ({"image": "data:image/png,AAAA"}, "image must be a data URL of base64 PNG data"),
    ],
)
def test_malformed_data_urls_are_400s_naming_the_field(client, body, message) -> None:
    response = client.post("/api/edit", json=body)
    assert response.status_code == 400 and message in response.json()["error"]
    mask = client.post("/api/inpaint", json={"image": bad_png(8), "mask": "data:"})
    assert mask.status_code == 400 and "mask must be a data URL" in mask.json()["error"]


def test_a_png_text_chunk_is_never_inflated(client) -> None:
    """The zTXt chunk is dropped unread: the image is taken as it is."""
    got = result(client, "reconstruct", {"image": png_with_text_bomb(), "steps": 2})
    assert got["model_calls"] == 4


def test_requests_from_other_sites_are_refused(client) -> None:
    foreign_host = client.get("/api/info", headers={"host": "evil.example"})
    assert foreign_host.status_code == 403 and "evil.example" in foreign_host.json()["error"]
    assert client.get("/", headers={"host": "evil.example:8000"}).status_code == 403
    origin = client.post("/api/sample", json={"n": 1, "steps": 1},
                         headers={"origin": "http://evil.example"})  # fmt: skip
    assert origin.status_code == 403 and "http://evil.example" in origin.json()["error"]
    form = client.post("/api/sample", content=b'{"n": 1, "steps": 1}',
                       headers={"content-type": "text/plain"})  # fmt: skip
    assert form.status_code == 415 and "application/json" in form.json()["error"]
    same = client.post(
        "/api/sample",
        json={"n": 1, "steps": 1},
        headers={"origin": "http://localhost:8000", "host": "localhost:8000"},
    )
    assert same.status_code == 200  # fmt: skip


def test_every_answer_carries_the_security_headers(client) -> None:
    for response in (
        client.get("/api/info"),
        client.get("/api/nothing"),
        client.post("/api/sample", json={"n": 1, "steps": 1}),
        client.post("/api/sample", json={"n": 0}),
        client.get("/"),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["referrer-policy"] == "no-referrer"
    wrong = client.get("/api/sample")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


def test_an_unexpected_failure_is_a_one_line_500(ckpts, monkeypatch, caplog) -> None:
    from ddim.serve import app as app_module

    def broken(*args, **kwargs):
        raise KeyError("secret internals")

    monkeypatch.setitem(app_module.JOBS, "sample", (broken, app_module.JOBS["sample"][1]))
    client = TestClient(create_app(served(ckpts["cond"]), allowed_hosts=("testserver",)),
                        raise_server_exceptions=True)  # fmt: skip
    response = client.post("/api/sample", json={"n": 1})
    assert response.status_code == 500
    assert response.json() == {"error": "the server failed on this request; see its log"}
    assert [r.getMessage() for r in caplog.records] == [
        "POST /api/sample failed: KeyError('secret internals')"
    ]


def test_a_slow_body_is_cut_off_and_a_departed_client_logged_in_one_line(ckpts, caplog):
    """On a real server: a body trickled past its deadline gets 408, and the connection
    still answers the next request; a client that leaves half-way is one log line."""
    app = create_app(served(ckpts["cond"]), limits=Limits(body_seconds=0.5))
    with running(app) as port:
        head = (
            f"POST /api/sample HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: 20\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(head + b'{"n"')
            time.sleep(1.0)
            answer = conn.recv(4096).decode()
            assert answer.startswith("HTTP/1.1 408") and "took over 0.5 s" in answer
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(head + b'{"n"')
        time.sleep(0.3)
        assert any("the client left" in r.getMessage() for r in caplog.records)
        assert not any(r.exc_info for r in caplog.records)


@contextlib.contextmanager
def running(app, **config) -> Iterator[int]:
    """``app`` on a real uvicorn server on a free local port (yielded), in a thread."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **config))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_trickled_request_head_is_cut_off_and_keep_alive_still_works(ckpts, caplog):
    from ddim.serve.protocol import with_header_deadline

    app = create_app(served(ckpts["cond"]))
    with running(app, http=with_header_deadline(0.5), timeout_keep_alive=5) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            started = time.monotonic()
            conn.sendall(b"GET /api/info HTTP/1.1\r\n")
            closed = False
            for byte in f"Host: 127.0.0.1:{port}\r\nX-Slow: aaaaaaaaaaaaaaaa".encode():
                try:
                    conn.sendall(bytes([byte]))
                    time.sleep(0.1)
                except OSError:
                    closed = True
                    break
            closed = closed or conn.recv(4096) == b""
            assert closed and time.monotonic() - started < 3
        assert any("request head took over 0.5 s" in r.getMessage() for r in caplog.records)
        get = f"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(get + get)  # two pipelined requests, both answered
            answers = b""
            while answers.count(b"HTTP/1.1 200") < 2:
                chunk = conn.recv(65536)
                assert chunk, answers
                answers += chunk


def test_allow_host_adds_a_name_and_loopback_is_always_answered(ckpts) -> None:
    app = create_app(served(ckpts["cond"]), allowed_hosts=("testserver", "box.lan"))
    client = TestClient(app)
    for host in ("box.lan:8000", "localhost", "127.0.0.1:9", "[::1]:8000"):
        assert client.get("/api/info", headers={"host": host}).status_code == 200, host
    assert client.get("/api/info", headers={"host": "box.lan.evil.example"}).status_code == 403


def test_a_500_leaves_a_keep_alive_connection_usable(ckpts, monkeypatch) -> None:
    """On a real server: a request that fails unexpectedly is answered 500, and the request
    pipelined behind it on the same connection is still answered."""
    from ddim.serve import app as app_module

    def broken(*args, **kwargs):
        raise KeyError("secret internals")

    monkeypatch.setitem(app_module.JOBS, "sample", (broken, app_module.JOBS["sample"][1]))
    with running(create_app(served(ckpts["cond"]))) as port:
        body = b'{"n": 1}'
        post = (
            f"POST /api/sample HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        get = f"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(post + get)
            answers = b""
            while b"HTTP/1.1 200" not in answers:
                chunk = conn.recv(65536)
                assert chunk, answers  # the connection was not closed after the 500
                answers += chunk
        assert answers.startswith(b"HTTP/1.1 500") and b"secret" not in answers


def test_a_distilled_student_is_served_with_its_own_plan(ckpts, tmp_path) -> None:
    """The page's steps default to the student's own, which run its own timesteps, as
    ``ddim sample --ckpt STUDENT`` does (the same grid, byte for byte)."""
    from ddim.formats.checkpoint import load_checkpoint, save_weights

    teacher = load_checkpoint(ckpts["plain"])
    config = {**teacher.model_config.to_dict(), "prediction": "v", "sampling_plan": [99, 49]}
    path = tmp_path / "student.safetensors"
    save_weights(path, None, teacher.ema_state, model_config=config, schedule=teacher.schedule,
                 data_shape=teacher.data_shape, step=0)  # fmt: skip
    client = TestClient(create_app(served(str(path)), allowed_hosts=("testserver",)))
    info = client.get("/api/info").json()
    assert info["sampling_plan"] == [99, 49] and info["defaults"]["sample"]["steps"] == 2
    got = result(client, "sample", {"n": 2, "seed": 1})
    assert got["model_calls"] == 2
    out = tmp_path / "cli.png"
    ok("sample", "--ckpt", path, "-n", 2, "--seed", 1, "--out", out)
    assert png_of(got["image"]) == out.read_bytes()
