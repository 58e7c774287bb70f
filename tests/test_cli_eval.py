"""``ddim eval``: each subcommand end to end on a tiny random U-Net, and the exact oracle."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import ddim
from ddim.cli.eval import eval_group
from ddim.eval.exact_gaussian import exact_grid, power_law_spectrum
from ddim.eval.metrics import FeatureStats
from ddim.formats.archives import load_npz
from ddim.formats.images import save_npz
from ddim.models.unet import UNet, UNetConfig

TINY = UNetConfig(
    in_channels=1, out_channels=1, ch=32, ch_mult=(1,), num_res_blocks=1,
    attn_resolutions=(), dropout=0.0, image_size=28,
)  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory, write_checkpoint):
    """A tiny random 28 x 28 U-Net checkpoint (T = 20) and 6 reference images."""
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    state = UNet(TINY).state_dict()
    ckpt = root / "tiny.safetensors"
    write_checkpoint(ckpt, state, ddim.NoiseSchedule.linear(20), config=TINY)
    data = root / "ref.npz"
    save_npz(data, torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    return str(ckpt), str(data)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(eval_group, list(args))
    return result.exit_code, result.output


def test_oracle_prints_the_exact_grid(tmp_path):
    code, out = run(
        "oracle", "--dim", "32", "--alpha", "1.5", "--steps", "10,100", "--etas", "0,0.5",
        "--spacing", "quad", "--out-dir", str(tmp_path),
    )  # fmt: skip
    assert code == 0, out
    rows = exact_grid(power_law_spectrum(32, 1.5), ddim.NoiseSchedule.linear(), [10, 100],
                      [0.0, 0.5], True, "quad")  # fmt: skip
    fd = {(r.label, r.steps): r.fd for r in rows}
    assert "## Exact FD, Gaussian oracle (D = 32, alpha = 1.5, quad spacing)" in out
    assert f"| η = 0.5 | {fd['η = 0.5', 10]:.4g} | {fd['η = 0.5', 100]:.4g} |" in out
    assert "computed in" in out
    saved = json.loads((tmp_path / "oracle-quad.json").read_text())
    assert saved["rows"][-1]["label"] == "σ̂" and saved["rows"][-1]["fd"] == fd["σ̂", 100]


def test_table1(files, tmp_path, monkeypatch):
    ckpt, data = files
    monkeypatch.setenv("DDIM_CACHE", str(tmp_path / "cache"))
    args = ["table1", "--ckpt", ckpt, "--features", "mnist", "--ref-data", data,
            "--ref-slice", "1:", "-n", "3", "--batch-size", "2", "--steps", "2,5",
            "--etas", "0", "--out-dir", str(tmp_path / "out")]  # fmt: skip
    code, out = run(*args)
    assert code == 0, out
    assert out.startswith("| | S = 2 | S = 5 |\n")
    rows = json.loads((tmp_path / "out/table1.json").read_text())["rows"]
    assert [(r["label"], r["steps"]) for r in rows] == [
        ("η = 0", 2), ("η = 0", 5), ("σ̂", 2), ("σ̂", 5)
    ]  # fmt: skip
    (cached,) = (tmp_path / "cache/stats").iterdir()
    assert FeatureStats.load(cached).n == 5
    assert run(*args)[1] == out  # the cached reference gives the same table


def test_table1_resumes_from_its_progress_folder(files, tmp_path, monkeypatch):
    ckpt, data = files
    monkeypatch.setenv("DDIM_CACHE", str(tmp_path / "cache"))
    args = ["table1", "--ckpt", ckpt, "--ref-data", data, "-n", "5", "--batch-size", "2",
            "--steps", "3", "--etas", "0.5", "--progress", str(tmp_path / "kept")]  # fmt: skip
    code, out = run(*args, "--out-dir", str(tmp_path / "a"))
    assert code == 0, out
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["S3-eta0.5", "S3-sigma-hat"]
    assert len(list((tmp_path / "kept/S3-eta0.5").iterdir())) == 3
    (tmp_path / "kept/S3-sigma-hat/0000002+2.npz").unlink()  # as if killed in that batch
    code, out = run(*args, "--out-dir", str(tmp_path / "b"))
    assert code == 0, out
    assert f"resuming: 5 finished batches kept in {tmp_path / 'kept'}" in out
    rows = [json.loads((tmp_path / d / "table1.json").read_text())["rows"] for d in "ab"]
    assert [r["fd"] for r in rows[1]] == [r["fd"] for r in rows[0]]  # bit-identical
    code, out = run(*args, "--seed", "1", "--out-dir", str(tmp_path / "c"))
    assert code == 2
    assert "0000000+2.npz was written by a different run" in out
    assert not (tmp_path / "c/table1.json").exists()


def test_table1_needs_one_reference(files):
    code, out = run("table1", "--ckpt", files[0])
    assert code == 2
    assert out.startswith("error: give exactly one of --ref-data and --ref-stats (see")


def test_table2(files, tmp_path):
    ckpt, data = files
    code, out = run("table2", "--ckpt", ckpt, "--data", data, "-n", "2", "--steps", "2,20",
                    "--out-dir", str(tmp_path))  # fmt: skip
    assert code == 0, out
    rows = json.loads((tmp_path / "table2.json").read_text())["mse"]
    assert list(rows) == ["ddim", "ddim, clamped"]
    assert list(rows["ddim"]) == ["2", "20"] and all(v > 0 for v in rows["ddim"].values())
    assert all(rows["ddim, clamped"][s] <= rows["ddim"][s] for s in ("2", "20"))
    exact = str(tmp_path / "x")
    code, out = run("table2", "--ckpt", ckpt, "--data", data, "-n", "2", "--steps", "4",
                    "--solvers", "ddim", "--solvers", "bdia", "--out-dir", exact)  # fmt: skip
    assert code == 0, out
    rows = json.loads((tmp_path / "x" / "table2.json").read_text())["mse"]
    assert rows["bdia"]["4"] < 1e-8 < rows["ddim"]["4"]
    assert "| bdia, clamped |" in (tmp_path / "x" / "table2.md").read_text()


def test_table2_edict_p_is_the_libraries_and_one_too_small_for_s_is_refused(files, tmp_path):
    """--edict-p reaches EDICT's rows: the row is the MSE of the library's own round trip
    at that p ([0, 1] pixels); a p whose inverse would expand x - y past 1e7 over S steps
    exits 2 naming the range (S = 20: 1e7^(-1/40) = 0.66834, so 0.6684)."""
    ckpt, data = files
    code, out = run("table2", "--ckpt", ckpt, "--data", data, "-n", "2", "--steps", "4",
                    "--solvers", "edict", "--edict-p", "0.9", "--precision", "fp32",
                    "--out-dir", str(tmp_path))  # fmt: skip
    assert code == 0, out
    report = json.loads((tmp_path / "table2.json").read_text())
    model, sched = ddim.load_pretrained(ckpt)
    x0 = load_npz(data)[:2]
    with torch.no_grad():
        z = ddim.invert(model, x0, sched, steps=4, solver="edict", edict_p=0.9)
        back = ddim.sample(model, z, sched, steps=4, solver="edict", edict_p=0.9)
    expected = (((back - x0) / 2) ** 2).mean().item()
    assert report["meta"]["edict_p"] == 0.9
    assert report["mse"]["edict"]["4"] == pytest.approx(expected, rel=1e-6, abs=1e-18)
    refused = str(tmp_path / "x")
    code, out = run("table2", "--ckpt", ckpt, "--data", data, "-n", "2", "--steps", "20",
                    "--solvers", "edict", "--edict-p", "0.5", "--out-dir", refused)  # fmt: skip
    assert code == 2 and "take edict_p in [0.6684, 1]" in out and "Traceback" not in out, out
    assert not (tmp_path / "x" / "table2.json").exists()


COMPILED = pytest.param(["--channels-last", "--compile"], marks=pytest.mark.slow)


@pytest.mark.parametrize("how", [["--channels-last"], COMPILED])
def test_eval_runs_the_model_channels_last_or_compiled_to_the_same_result(files, tmp_path, how):
    """Issue 10's long evaluations: --channels-last and --compile change how the model runs,
    not what it computes (up to rounding); the compile time is printed."""
    ckpt, data = files
    mse = {}
    for name, extra in (("plain", []), ("fast", how)):
        code, out = run("table2", "--ckpt", ckpt, "--data", data, "-n", "3", "--steps", "2",
                        *extra, "--out-dir", str(tmp_path / name))  # fmt: skip
        assert code == 0, out
        mse[name] = json.loads((tmp_path / name / "table2.json").read_text())["mse"]["ddim"]["2"]
    assert mse["plain"] > 1e-5
    assert mse["fast"] == pytest.approx(mse["plain"], rel=1e-4)
    assert ("torch.compile took" in out) == ("--compile" in how)


def test_consistency_and_interpolation(files, tmp_path):
    ckpt, _ = files
    code, out = run("consistency", "--ckpt", ckpt, "-n", "4", "--show", "2", "--steps", "2,5",
                    "--ref-steps", "20", "--out-dir", str(tmp_path))  # fmt: skip
    assert code == 0, out
    agreement = json.loads((tmp_path / "consistency.json").read_text())["agreement"]
    assert set(agreement) == {"2", "5"}
    assert "of 4 labels match S = 20" in out
    assert Image.open(tmp_path / "consistency.png").size == (2 * 30 + 2, 3 * 30 + 2)

    code, out = run("interpolation", "--ckpt", ckpt, "-n", "3", "--steps", "2",
                    "--out-dir", str(tmp_path))  # fmt: skip
    assert code == 0, out
    assert Image.open(tmp_path / "interpolation.png").size == (3 * 30 + 2, 3 * 30 + 2)


def test_bad_lists_are_usage_errors(files):
    code, out = run("oracle", "--steps", "10,x")
    assert code == 2 and "'10,x' is not a comma-separated int list" in out
    code, out = run("oracle", "--steps", "10,2000", "--dim", "4")
    assert code == 2 and "2000 is more than the model's 1000 timesteps" in out


@pytest.mark.slow
def test_merge_of_pieces_equals_the_whole_grid(files, tmp_path, monkeypatch):
    ckpt, data = files
    monkeypatch.setenv("DDIM_CACHE", str(tmp_path / "cache"))
    common = ["table1", "--ckpt", ckpt, "--ref-data", data, "-n", "3", "--batch-size", "2"]
    pieces = {
        "whole": ["--steps", "2,5", "--etas", "0,1"],
        "a": ["--steps", "2,5", "--etas", "0", "--no-sigma-hat"],
        "b": ["--steps", "5", "--etas", "1"],
        "c": ["--steps", "2", "--etas", "1"],
    }
    for name, args in pieces.items():
        code, out = run(*common, *args, "--out-dir", str(tmp_path / name))
        assert code == 0, out
    code, out = run("merge", *(str(tmp_path / p / "table1.json") for p in "abc"),
                    "--out-dir", str(tmp_path / "merged"))  # fmt: skip
    assert code == 0, out
    whole = json.loads((tmp_path / "whole/table1.json").read_text())
    merged = json.loads((tmp_path / "merged/table1.json").read_text())
    cells = [(r["label"], r["steps"], r["fd"]) for r in whole["rows"]]
    assert [(r["label"], r["steps"], r["fd"]) for r in merged["rows"]] == cells
    assert merged["meta"]["merged_from"][0].endswith("a/table1.json")
    assert out.startswith((tmp_path / "whole/table1.md").read_text().split("\n", 2)[2])
    assert (tmp_path / "merged/table1.png").stat().st_size > 0


def test_merge_of_table2_columns(files, tmp_path):
    ckpt, data = files
    for name, steps in (("whole", "2,20"), ("a", "20"), ("b", "2")):
        code, out = run("table2", "--ckpt", ckpt, "--data", data, "-n", "2", "--steps", steps,
                        "--out-dir", str(tmp_path / name))  # fmt: skip
        assert code == 0, out
    code, out = run("merge", str(tmp_path / "a/table2.json"), str(tmp_path / "b/table2.json"),
                    "--out-dir", str(tmp_path / "merged"))  # fmt: skip
    assert code == 0, out
    whole = json.loads((tmp_path / "whole/table2.json").read_text())["mse"]
    assert json.loads((tmp_path / "merged/table2.json").read_text())["mse"] == whole
    assert (tmp_path / "merged/table2.md").read_text() == (tmp_path / "whole/table2.md").read_text()


def test_merge_refuses_what_does_not_fit(files, tmp_path):
    ckpt, data = files
    for name, n in (("a", "2"), ("b", "3")):
        code, out = run("table2", "--ckpt", ckpt, "--data", data, "-n", n, "--steps", "2",
                        "--out-dir", str(tmp_path / name))  # fmt: skip
        assert code == 0, out
    a, b = str(tmp_path / "a/table2.json"), str(tmp_path / "b/table2.json")
    out_dir = str(tmp_path / "merged")
    code, out = run("merge", a, b, "--out-dir", out_dir)
    assert (code, out) == (2, f"error: cannot merge: n is 2 in {a} but 3 in {b}\n")
    code, out = run("merge", a, a, "--out-dir", out_dir)
    assert (code, out) == (2, f"error: {a} is given twice\n")
    copy = tmp_path / "copy.json"
    copy.write_text((tmp_path / "a/table2.json").read_text())
    code, out = run("merge", a, str(copy), "--out-dir", out_dir)
    assert (code, out) == (2, f"error: the cell ddim, S = 2 is in both {a} and {copy}\n")
    oracle = tmp_path / "oracle.json"
    oracle.write_text('{"rows": []}')
    code, out = run("merge", str(oracle), "--out-dir", out_dir)
    assert (code, out) == (
        2,
        f"error: {oracle} is not a table1.json or table2.json written by ddim eval\n",
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    code, out = run("merge", str(bad), "--out-dir", out_dir)
    assert code == 2 and out.startswith(f"error: {bad} is not JSON (")
    assert not (tmp_path / "merged").exists()


def test_merge_reads_table2_files_from_before_the_rows(tmp_path):
    """A table2.json of one unclamped DDIM row ("mse": {S: value}) merges as the row ddim."""
    meta = {"ckpt": "mnist", "data": "d", "n": 2, "spacing": "uniform"}
    (tmp_path / "old.json").write_text(json.dumps({"meta": meta, "mse": {"10": 0.03}}))
    new = {"meta": meta, "mse": {"ddim": {"20": 0.01}, "ddim, clamped": {"20": 0.002}}}
    (tmp_path / "new.json").write_text(json.dumps(new))
    code, out = run("merge", str(tmp_path / "old.json"), str(tmp_path / "new.json"),
                    "--out-dir", str(tmp_path / "m"))  # fmt: skip
    assert code == 0, out
    rows = json.loads((tmp_path / "m" / "table2.json").read_text())["mse"]
    assert rows == {"ddim": {"10": 0.03, "20": 0.01}, "ddim, clamped": {"20": 0.002}}
