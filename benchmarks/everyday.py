"""Benchmark of everyday use (issue 11): first run, fast errors, startup cost, reproducibility.

Measures, on this machine, from empty caches, through the `evounlearn` command as a user runs it:
  fresh_main_seconds          README's main command (`evounlearn evolve`) from an empty cache (install excluded)
  prepare_in_evolve_seconds   the prepare part of that run (the target info job's own clock)
  prepare_standalone_seconds  `evounlearn prepare` from an empty cache
  cli_error_seconds           median over 5 bad invocations (unknown method, bad option, bad value, ...)
  bad_data_error_seconds      slowest of prepare / unlearn / eval on a data folder with a missing column
                              and with an empty forget split (median over the bad folders, per command)
  startup_seconds             process start -> first training step of `unlearn --method grad_ascent`
  startup_floor_seconds       a bare script importing torch + transformers and loading the same model
  reproducible                two identical `unlearn --method npo` runs give identical results.json summaries
Timed pairs are interleaved (A, B, A, B, ...) and reported as medians, so both sides of a ratio see the
same machine. Writes benchmarks/results/everyday.json (and prints it as the last line).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXE = [sys.executable, "-m", "evounlearn"]


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["EVOUNLEARN_CACHE"] = str(cache)
    env.update(extra)
    return env


def run(args: list[str], cache: Path, cwd: Path, timeout: float = 3600.0,
        keep: int | None = 2000) -> tuple[float, int, str]:
    """(seconds, exit code, the last `keep` chars of stdout+stderr; None: all) of one command."""
    t0 = time.perf_counter()
    p = subprocess.run(EXE + args, cwd=cwd, env=_env(cache), capture_output=True, text=True, timeout=timeout)
    out = p.stdout + p.stderr
    return time.perf_counter() - t0, p.returncode, out if keep is None else out[-keep:]


def time_to_first_step(args: list[str], cache: Path, cwd: Path, run_dir: Path) -> float:
    """Seconds from process start until the first training step finished (the loop records the
    wall-clock time of its first step in RUN_DIR/train.json)."""
    t0 = time.time()
    p = subprocess.run(EXE + args + ["--run-dir", str(run_dir)], cwd=cwd, env=_env(cache), capture_output=True,
                       text=True, timeout=3600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-2000:]
    record = json.loads((run_dir / "train.json").read_text())
    return float(record["first_step_at"]) - t0


FLOOR = """
import sys, time
t0 = float(sys.argv[2])
import torch, transformers
tok = transformers.AutoTokenizer.from_pretrained(sys.argv[1])
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])
print(time.time() - t0)
"""


def startup_floor(model_dir: str) -> float:
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", FLOOR, model_dir, str(t0)], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bad_folders(root: Path, cache: Path) -> dict[str, Path]:
    """Copies of the generated benchmark's files with a missing column and with an empty forget split."""
    from evounlearn.data.generated import GeneratedConfig, write_benchmark

    good = write_benchmark(GeneratedConfig(), root / "good")
    out = {}
    for name in ("missing_column", "empty_split"):
        d = root / name
        shutil.copytree(good, d)
        f = d / "forget10.json"
        if name == "empty_split":
            f.write_text("")
        else:
            rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
            f.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "answer"}) + "\n" for r in rows))
        out[name] = d
    return out


CLI_ERRORS = [
    ["unlearn", "--method", "no_such_method"],
    ["prepare", "no_such_option=1"],
    ["unlearn", "--method", "npo", "train.lr=abc"],
    ["evolve", "--budget", "zero"],
    ["eval", "--no-such-flag"],
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats of the long timed pairs")
    ap.add_argument("--out", default=str(HERE / "results" / "everyday.json"))
    args = ap.parse_args()

    import torch
    import transformers

    work = Path(tempfile.mkdtemp(prefix="evounlearn-everyday-"))
    res: dict[str, object] = {}

    # 1. README's main command vs standalone prepare, interleaved, each from its own empty cache.
    fresh, in_evolve, standalone = [], [], []
    last_cache = None
    for r in range(args.repeats):
        c_evolve, c_prep = work / f"cache-evolve-{r}", work / f"cache-prepare-{r}"
        s, rc, out = run(["evolve", "--run-dir", str(work / f"run-{r}")], c_evolve, work, keep=None)
        assert rc == 0, out[-2000:]
        fresh.append(s)
        found = re.search(r"prepared in ([0-9.]+) s", out)  # the CLI prepares before the search starts
        assert found, out[-2000:]
        in_evolve.append(float(found.group(1)))
        s, rc, tail = run(["prepare"], c_prep, work)
        assert rc == 0, tail
        standalone.append(s)
        last_cache = c_prep
    res.update(fresh_main_seconds=statistics.median(fresh), prepare_in_evolve_seconds=statistics.median(in_evolve),
               prepare_standalone_seconds=statistics.median(standalone), fresh_main_runs=fresh,
               prepare_in_evolve_runs=in_evolve, prepare_standalone_runs=standalone)
    assert last_cache is not None

    # 2. argument and configuration errors.
    walls = []
    for a in CLI_ERRORS:
        s, rc, tail = run(a, last_cache, work)
        assert rc != 0, f"{a} did not fail: {tail}"
        walls.append(s)
    res["cli_error_seconds"] = statistics.median(walls)
    res["cli_error_runs"] = walls

    # 3. bad data: each command on each bad folder, the slowest command's median.
    per_cmd: dict[str, list[float]] = {"prepare": [], "unlearn": [], "eval": []}
    for name, folder in bad_folders(work / "data", last_cache).items():
        for cmd in per_cmd:
            extra = ["--method", "npo"] if cmd == "unlearn" else []
            s, rc, tail = run([cmd, *extra, "--data", str(folder)], work / f"cache-bad-{name}", work, timeout=300)
            assert rc != 0, f"{cmd} on {name} did not fail: {tail}"
            per_cmd[cmd].append(s)
    res["bad_data_error_seconds"] = max(statistics.median(v) for v in per_cmd.values())
    res["bad_data_runs"] = per_cmd

    # 4. startup to the first training step vs the floor (interleaved), on the prepared cache.
    target_dir = next(p.parent for p in sorted(last_cache.rglob("config.json")) if p.parent.name == "target")
    starts, floors = [], []
    for _ in range(3):
        starts.append(time_to_first_step(["unlearn", "--method", "grad_ascent", "train.epochs=1"], last_cache,
                                         work, work / "startup"))
        floors.append(startup_floor(str(target_dir)))
        shutil.rmtree(work / "startup", ignore_errors=True)
    res.update(startup_seconds=statistics.median(starts), startup_floor_seconds=statistics.median(floors),
               startup_runs=starts, startup_floor_runs=floors)

    # 5. reproducibility: the same command twice.
    summaries = []
    for k in range(2):
        s, rc, tail = run(["unlearn", "--method", "npo", "--run-dir", str(work / f"repro-{k}")], last_cache, work)
        assert rc == 0, tail
        summaries.append(json.loads((work / f"repro-{k}" / "results.json").read_text())["summary"])
    res["reproducible"] = summaries[0] == summaries[1]

    res["env"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                  "threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                  "device": "cpu", "cpus": os.cpu_count(), "python": platform.python_version()}
    res["criteria"] = {
        "fresh_main_le_600": res["fresh_main_seconds"] <= 600,
        "prepare_in_evolve_le_1.2x": res["prepare_in_evolve_seconds"] <= 1.2 * res["prepare_standalone_seconds"],
        "cli_error_lt_1": res["cli_error_seconds"] < 1.0,
        "bad_data_error_lt_2": res["bad_data_error_seconds"] < 2.0,
        "startup_le_1.5x_floor": res["startup_seconds"] <= 1.5 * res["startup_floor_seconds"],
        "reproducible": res["reproducible"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
