"""Training data at scale: memory against the set's size, loader against training speed, and
the time to pack a folder (issue #41's targets). Generated images only.

1. **Folders.** ``--small`` and ``--large`` 64x64 RGB PNGs (smooth random pictures, a few
   KB each), and ``--big-count`` 256x256 RGB JPEGs, made once under ``--root``.
2. **Packing** each folder with ``ddim.formats.packed.pack_folder`` (workers: one per
   core but one), timed.
3. **Memory.** ``python -m ddim.train`` for a few steps on each folder, on its pack, and, as
   the contrast, on the same pixels as an in-memory ``.npz``; each in a fresh process, which
   reports its peak resident set (``VmHWM``) and its largest child's (decoding workers, the
   scan's pool).
4. **Throughput.** Images/s of the step loader alone (``ddim.train.loader``: folder and pack,
   64 and 256 px, workers 0 and the default) against images/s of a training step alone (the
   model of ``configs/folder.yaml`` at 64 px; the official LSUN 256 px U-Net at 256 px), both
   in this process with the threads torch has.

    python benchmarks/data_scale.py --root /tmp/ddim-data-bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddim.formats.datasets import DataConfig, decode_workers, open_image_set
from ddim.formats.image_sets import Reading
from ddim.formats.packed import PackedSet, pack_folder, verify_packed
from ddim.models.unet import UNet, UNetConfig
from ddim.train.batches import DataOrder
from ddim.train.config import load_config
from ddim.train.loader import StepShares, step_loader
from ddim.train.loss import diffusion_loss

REPO = Path(__file__).resolve().parents[1]
#: The official LSUN 256x256 model (ermongroup/ddim configs/church.yml).
LSUN_256 = UNetConfig(ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                      attn_resolutions=(16,), dropout=0.0, image_size=256)  # fmt: skip

# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a child would
# report this benchmark's own peak.
RSS_PROBE = """
import resource, sys
from ddim.train import __main__ as cli
status = cli.main(sys.argv[1:])
with open("/proc/self/status") as f:
    me = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"RSS {me} {kids} {status}")
"""


def _picture(args: tuple[Path, int, int, str]) -> None:
    path, seed, size, fmt = args
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    img.save(path, quality=90) if fmt == "jpg" else img.save(path)


def make_folder(folder: Path, n: int, size: int, fmt: str) -> Path:
    """``n`` pictures in ``folder`` (kept if already complete), 1,000 to a subfolder."""
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    jobs = []
    for k in range(n):
        sub = folder / f"{k // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        jobs.append((sub / f"{k:06d}.{fmt}", k, size, fmt))
    with ProcessPoolExecutor(max(1, (os.cpu_count() or 1) - 1)) as pool:
        list(pool.map(_picture, jobs, chunksize=256))
    marker.write_text("")
    return folder


def peak_rss(data: dict, tmp: Path) -> tuple[float, float]:
    """Peak RSS (MB) of a 4-step ``python -m ddim.train`` on ``data`` and of its largest child."""
    sets = {
        "model.ch": 32, "model.ch_mult": "[1,2]", "model.num_res_blocks": 1,
        "model.attn_resolutions": "[]", "training.batch_size": 4, "training.total_steps": 4,
        "training.sample_every": 0, "training.ckpt_every": 1000, "training.device": "cpu",
        "out_dir": tmp / f"run-{time.monotonic_ns()}",
    } | {f"data.{k}": v for k, v in data.items()}  # fmt: skip
    args = [str(REPO / "configs" / "folder.yaml"), "--no-progress"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, *args], capture_output=True,
                         text=True, check=True)  # fmt: skip
    _, me, kids, status = out.stdout.strip().splitlines()[-1].split()
    if status != "0":
        raise RuntimeError(out.stderr[-2000:])
    return int(me) / 1024, int(kids) / 1024


def loader_rate(cfg: DataConfig, workers: int, batch: int, steps: int) -> float:
    """Images/s of the step loader alone over ``steps`` steps (after one to start up), with
    the files in the page cache (a pack is hashed once first; a folder's scan reads it)."""
    if cfg.kind == "packed":
        verify_packed(cfg.path)
    images, _ = open_image_set(cfg, workers=decode_workers(cfg))
    shares = StepShares(images, DataOrder(len(images), 0), batch, slice(None), False)
    stream = step_loader(shares, 1, steps + 1, workers, False)
    next(stream)
    began = time.perf_counter()
    for _ in stream:
        pass
    return steps * batch / (time.perf_counter() - began)


def train_rate(config: UNetConfig, batch: int, steps: int) -> float:
    """Images/s of full fp32 training steps (forward, backward, Adam) on ``config``."""
    torch.manual_seed(0)
    model = UNet(config).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    shape = (batch, config.in_channels, config.image_size, config.image_size)

    def step() -> None:
        x0, noise = torch.rand(shape) * 2 - 1, torch.randn(shape)
        t = torch.randint(0, 1000, (batch,))
        loss = diffusion_loss(model, x0, t, noise, alpha_bar, torch.ones(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "ddim-data")
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=50000)
    parser.add_argument("--big-count", type=int, default=2000, help="256x256 JPEGs")
    parser.add_argument("--batch", type=int, default=64, help="loader batch")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    root, results = args.root, {"cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}

    began = time.perf_counter()
    small = make_folder(root / f"png64-{args.small}", args.small, 64, "png")
    large = make_folder(root / f"png64-{args.large}", args.large, 64, "png")
    big = make_folder(root / f"jpg256-{args.big_count}", args.big_count, 256, "jpg")
    print(f"folders ready in {time.perf_counter() - began:.0f} s")

    packs = {}
    workers = max(1, (os.cpu_count() or 1) - 1)
    for name, folder, size in (("small", small, 64), ("large", large, 64), ("big", big, 256)):
        pack = root / f"{folder.name}.pack"
        if not pack.is_dir():
            began = time.perf_counter()
            pack_folder(folder, pack, Reading(size, 3, "center-crop"), workers=workers)
            seconds = time.perf_counter() - began
            results[f"pack_seconds_{name}"] = seconds
            print(f"packed {folder.name} ({workers} workers): {seconds:.1f} s")
        packs[name] = pack

    with tempfile.TemporaryDirectory() as tmp:
        memory = {}
        for name, folder in (("small", small), ("large", large)):
            npz = Path(tmp) / f"{name}.npz"
            np.savez(npz, x=PackedSet(packs[name]).batch(torch.arange(len(PackedSet(packs[name]))))
                     .numpy())  # fmt: skip
            for kind, data in (
                ("folder", {"kind": "folder", "path": folder}),
                ("packed", {"kind": "packed", "path": packs[name]}),
                ("in-memory npz", {"kind": "npz", "path": npz}),
            ):
                memory[(kind, name)] = peak_rss(data, Path(tmp))
                print(f"peak RSS {kind:>13} {name:>5}: main {memory[(kind, name)][0]:7.0f} MB, "
                      f"largest child {memory[(kind, name)][1]:6.0f} MB")  # fmt: skip
            npz.unlink()
        for kind in ("folder", "packed", "in-memory npz"):
            growth = memory[(kind, "large")][0] - memory[(kind, "small")][0]
            results[f"rss_growth_mb_{kind}"] = growth
            print(f"{kind}: main process peak RSS grows {growth:+.0f} MB from "
                  f"{args.small} to {args.large} images")  # fmt: skip
        results["rss_mb"] = {f"{k} {n}": v for (k, n), v in memory.items()}

    rates = {}
    default = decode_workers(DataConfig(kind="folder", path="x", image_size=64, channels=3))
    for size, folder, pack in ((64, large, packs["large"]), (256, big, packs["big"])):
        for kind, path in (("folder", folder), ("packed", pack)):
            cfg = DataConfig(kind=kind, path=path, image_size=size, channels=3)
            for w in sorted({0, default}):
                rate = loader_rate(cfg, w, args.batch, steps=10)
                rates[f"loader {kind} {size}px workers={w}"] = rate
                print(f"loader {kind:>6} {size:3d} px, {w} workers: {rate:8.0f} images/s")
    folder_model = load_config(REPO / "configs" / "folder.yaml").model
    for size, config, batch in ((64, folder_model, 16), (256, LSUN_256, 2)):
        rate = train_rate(config, batch, steps=3)
        rates[f"train step {size}px"] = rate
        print(f"training step {size:3d} px (batch {batch}): {rate:8.2f} images/s")
    results["images_per_s"] = rates
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
