"""A short load check of ``ddim serve``: many sample requests at once.

Starts ``ddim serve`` (the bundled mnist-cond unless ``--ckpt``) as its own process on a
free port, sends ``--requests`` sample requests at the same moment (each ``--n`` images of
``--steps`` steps, its own seed, with a class and guidance), and meanwhile asks for the page
``/`` every 0.1 s. Printed: how many requests ended with a result, an error or a refusal
(503: queue full), the slowest and median request, the slowest answer to ``/`` while the
queue was full, and the server's resident memory (VmRSS, from /proc) before, at its
highest, and after. The check passes when every request ends with a result, ``/`` kept
answering, and memory stayed within ``--max-growth-mb`` of where it started.

    python benchmarks/serve_load.py [--requests 20] [--n 4] [--steps 10] [--out RESULT.json]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def sample(url: str, body: dict) -> tuple[str, float]:
    """``("result" | "error" | "HTTP <status>", seconds)`` of one sample request."""
    start = time.perf_counter()
    request = urllib.request.Request(
        url + "api/sample", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:
            last = json.loads(answer.read().decode().splitlines()[-1])
        outcome = "result" if "result" in last else "error"
    except urllib.error.HTTPError as e:
        outcome = f"HTTP {e.code}"
    return outcome, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="mnist-cond")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-growth-mb", type=float, default=500.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ddim.cli", "serve", "--ckpt", args.ckpt, "--port", str(port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = server.stdout.readline().split(" on ")[1].split()[0]
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
        rss = {"before": rss_mb(server.pid)}
        peak, page_seconds, results = rss["before"], [], [None] * args.requests
        done = threading.Event()

        def one(i: int) -> None:
            body = {"n": args.n, "steps": args.steps, "seed": 1000 * i, "class": i % 10,
                    "guidance": 2.0}  # fmt: skip
            results[i] = sample(url, body)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(args.requests)]
        start = time.perf_counter()
        for t in threads:
            t.start()

        def watch() -> None:
            nonlocal peak
            while not done.is_set():
                t0 = time.perf_counter()
                urllib.request.urlopen(url, timeout=30).read()
                page_seconds.append(time.perf_counter() - t0)
                peak = max(peak, rss_mb(server.pid))
                time.sleep(0.1)

        watcher = threading.Thread(target=watch)
        watcher.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        done.set()
        watcher.join()
        rss["peak"], rss["after"] = peak, rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    outcomes = [r[0] for r in results]
    seconds = [r[1] for r in results]
    report = {
        "requests": args.requests,
        "images_each": args.n,
        "steps": args.steps,
        "outcomes": {o: outcomes.count(o) for o in sorted(set(outcomes))},
        "wall_s": round(wall, 2),
        "request_s": {
            "median": round(statistics.median(seconds), 2),
            "max": round(max(seconds), 2),
        },
        "page_s": {"answers": len(page_seconds), "max": round(max(page_seconds), 3)},
        "rss_mb": {k: round(v, 1) for k, v in rss.items()},
    }
    print(json.dumps(report, indent=2))
    ok = outcomes.count("result") == args.requests and page_seconds
    ok = ok and rss["peak"] - rss["before"] <= args.max_growth_mb
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
