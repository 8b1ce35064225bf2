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
  loaded_main_seconds         README's main command from an empty cache while two busy-loop processes (started
                              and stopped here) hold the cores; interleaved with fresh_main_seconds
  missing_model_error_seconds slowest per-case median of `eval --model MISSING`, `unlearn --model MISSING` and
                              `eval --model org/name` with HF_HUB_OFFLINE=1 (a Hub id not in the cache)
  eval_first_output_seconds   process start -> the first line `evounlearn eval` prints (prepared cache), median of 3
  suite_seconds               `python -m pytest -q` (the whole test suite), wall-clock (skip: --parts without suite)
Timed pairs are interleaved (A, B, A, B, ...) and reported as medians, so both sides of a ratio see the
same machine. The commands run without the shell's OMP_NUM_THREADS / OMP_WAIT_POLICY (what is measured is
the command's own thread default; --keep-thread-env keeps them). Writes benchmarks/results/everyday.json (and prints it as the last line).

    python benchmarks/everyday.py [--repeats N] [--parts main,loaded,errors,bad_data,startup,repro,missing_model,eval_first,suite]
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


PARTS = ("main", "loaded", "errors", "bad_data", "startup", "repro", "missing_model", "eval_first", "suite")
#: a busy loop that ends by itself, so that it never outlives the benchmark (even a killed one)
BUSY = "import sys, time\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    pass\n"


class BusyLoops:
    """Two (`n`) busy-loop processes for the duration of a `with` block (each also ends by itself
    after `limit_s`)."""

    def __init__(self, n: int = 2, limit_s: float = 3600.0) -> None:
        self.n, self.limit_s = n, limit_s
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> BusyLoops:
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY, str(self.limit_s)]) for _ in range(self.n)]
        time.sleep(1.0)  # let them take the cores before the command starts
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def first_output_seconds(args: list[str], cache: Path, cwd: Path, timeout: float = 120.0) -> float:
    """Seconds from process start until the command printed its first line (stdout or stderr); the
    command is stopped there."""
    t0 = time.perf_counter()
    p = subprocess.Popen(EXE + args, cwd=cwd, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        seconds = time.perf_counter() - t0
        assert line, f"{args}: no output"
        return seconds
    finally:
        p.kill()
        p.wait(timeout)


#: the thread settings of the shell that starts the benchmark; the commands run without them (the
#: command's own default is what is measured) unless --keep-thread-env
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
KEEP_THREAD_ENV = False


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if KEEP_THREAD_ENV or k not in THREAD_ENV}
    env["EVOUNLEARN_CACHE"] = str(cache)
    env.update(extra)
    return env


def run(args: list[str], cache: Path, cwd: Path, timeout: float = 3600.0,
        keep: int | None = 2000, **extra_env: str) -> tuple[float, int, str]:
    """(seconds, exit code, the last `keep` chars of stdout+stderr; None: all) of one command."""
    t0 = time.perf_counter()
    p = subprocess.run(EXE + args, cwd=cwd, env=_env(cache, **extra_env), capture_output=True, text=True,
                       timeout=timeout)
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
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts to measure, from: "
                    + ", ".join(PARTS) + " (default: all); `loaded` needs `main`")
    ap.add_argument("--keep-thread-env", action="store_true", help="run the commands with this shell's "
                    "OMP_NUM_THREADS / OMP_WAIT_POLICY (default: without them: the command's own thread default)")
    args = ap.parse_args()
    global KEEP_THREAD_ENV
    KEEP_THREAD_ENV = args.keep_thread_env
    parts = set(args.parts.split(","))
    unknown = parts - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s): {', '.join(sorted(unknown))} (known: {', '.join(PARTS)})")
    if "loaded" in parts and "main" not in parts:
        ap.error("`loaded` is interleaved with `main`: add main to --parts")

    import torch
    import transformers

    work = Path(tempfile.mkdtemp(prefix="evounlearn-everyday-"))
    res: dict[str, object] = {}

    # 1. README's main command vs standalone prepare (and, with `loaded`, the main command beside two
    #    busy-loop processes), interleaved, each from its own empty cache.
    fresh, in_evolve, standalone, loaded = [], [], [], []
    last_cache = None
    for r in range(args.repeats if "main" in parts else 0):
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
        if "loaded" in parts:
            with BusyLoops(2):
                s, rc, tail = run(["evolve", "--run-dir", str(work / f"run-loaded-{r}")], work / f"cache-loaded-{r}",
                                  work)
            assert rc == 0, tail
            loaded.append(s)
    if fresh:
        res.update(fresh_main_seconds=statistics.median(fresh),
                   prepare_in_evolve_seconds=statistics.median(in_evolve),
                   prepare_standalone_seconds=statistics.median(standalone), fresh_main_runs=fresh,
                   prepare_in_evolve_runs=in_evolve, prepare_standalone_runs=standalone)
    if loaded:
        res.update(loaded_main_seconds=statistics.median(loaded), loaded_main_runs=loaded)
    if last_cache is None:  # the later parts need a prepared cache
        last_cache = work / "cache-prepare"
        _, rc, tail = run(["prepare"], last_cache, work)
        assert rc == 0, tail

    # 2. argument and configuration errors.
    walls = []
    for a in CLI_ERRORS if "errors" in parts else []:
        s, rc, tail = run(a, last_cache, work)
        assert rc != 0, f"{a} did not fail: {tail}"
        walls.append(s)
    if walls:
        res["cli_error_seconds"] = statistics.median(walls)
        res["cli_error_runs"] = walls

    # 2b. a missing model: a path, a path given to unlearn, a Hub id offline (not in the cache).
    if "missing_model" in parts:
        cases = {"eval_path": ["eval", "--model", str(work / "no-such-model")],
                 "unlearn_path": ["unlearn", "--method", "npo", "--model", str(work / "no-such-model")],
                 "eval_hub_id_offline": ["eval", "--model", "no-such-org/no-such-model"]}
        per_case: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(3):
            for name, a in cases.items():
                s, rc, tail = run(a, work / "cache-missing-model", work, timeout=120, HF_HUB_OFFLINE="1")
                assert rc == 2 and len(tail.strip().splitlines()) == 1, f"{a}: rc {rc}: {tail}"
                per_case[name].append(s)
        assert not (work / "cache-missing-model").exists(), "a missing model wrote to the cache"
        res["missing_model_error_seconds"] = max(statistics.median(v) for v in per_case.values())
        res["missing_model_runs"] = per_case

    # 2c. `eval` says what it does: process start -> its first line (then it is stopped).
    if "eval_first" in parts:
        firsts = [first_output_seconds(["eval"], last_cache, work) for _ in range(3)]
        res.update(eval_first_output_seconds=statistics.median(firsts), eval_first_output_runs=firsts)

    # 3. bad data: each command on each bad folder, the slowest command's median.
    per_cmd: dict[str, list[float]] = {"prepare": [], "unlearn": [], "eval": []} if "bad_data" in parts else {}
    for name, folder in bad_folders(work / "data", last_cache).items():
        for cmd in per_cmd:
            extra = ["--method", "npo"] if cmd == "unlearn" else []
            s, rc, tail = run([cmd, *extra, "--data", str(folder)], work / f"cache-bad-{name}", work, timeout=300)
            assert rc != 0, f"{cmd} on {name} did not fail: {tail}"
            per_cmd[cmd].append(s)
    if per_cmd:
        res["bad_data_error_seconds"] = max(statistics.median(v) for v in per_cmd.values())
        res["bad_data_runs"] = per_cmd

    # 4. startup to the first training step vs the floor (interleaved), on the prepared cache.
    target_dir = next(p.parent for p in sorted(last_cache.rglob("config.json")) if p.parent.name == "target")
    starts, floors = [], []
    for _ in range(3 if "startup" in parts else 0):
        starts.append(time_to_first_step(["unlearn", "--method", "grad_ascent", "train.epochs=1"], last_cache,
                                         work, work / "startup"))
        floors.append(startup_floor(str(target_dir)))
        shutil.rmtree(work / "startup", ignore_errors=True)
    if starts:
        res.update(startup_seconds=statistics.median(starts), startup_floor_seconds=statistics.median(floors),
                   startup_runs=starts, startup_floor_runs=floors)

    # 5. reproducibility: the same command twice.
    summaries = []
    for k in range(2 if "repro" in parts else 0):
        s, rc, tail = run(["unlearn", "--method", "npo", "--run-dir", str(work / f"repro-{k}")], last_cache, work)
        assert rc == 0, tail
        summaries.append(json.loads((work / f"repro-{k}" / "results.json").read_text())["summary"])
    if summaries:
        res["reproducible"] = summaries[0] == summaries[1]

    # 6. the test suite, as the README's second line runs it (from the repository root).
    if "suite" in parts:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=HERE.parent,
                           capture_output=True, text=True)
        res.update(suite_seconds=time.perf_counter() - t0, suite_returncode=p.returncode,
                   suite_summary=(p.stdout.strip().splitlines() or [""])[-1])

    res["env"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                  "threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                  "commands_thread_env": "kept" if KEEP_THREAD_ENV else "removed (the command's own default)",
                  "device": "cpu", "cpus": os.cpu_count(), "python": platform.python_version()}
    def crit(*keys: str) -> bool:
        return all(k in res for k in keys)

    checks = {
        "fresh_main_le_600": (("fresh_main_seconds",), lambda: res["fresh_main_seconds"] <= 600),
        "prepare_in_evolve_le_1.2x": (("prepare_in_evolve_seconds",),
                                      lambda: res["prepare_in_evolve_seconds"] <= 1.2 * res["prepare_standalone_seconds"]),
        "loaded_main_le_3x_fresh": (("loaded_main_seconds", "fresh_main_seconds"),
                                    lambda: res["loaded_main_seconds"] <= 3 * res["fresh_main_seconds"]),
        "cli_error_lt_1": (("cli_error_seconds",), lambda: res["cli_error_seconds"] < 1.0),
        "bad_data_error_lt_2": (("bad_data_error_seconds",), lambda: res["bad_data_error_seconds"] < 2.0),
        "missing_model_error_lt_2": (("missing_model_error_seconds",), lambda: res["missing_model_error_seconds"] < 2.0),
        "eval_first_output_lt_1.5": (("eval_first_output_seconds",), lambda: res["eval_first_output_seconds"] < 1.5),
        "startup_le_1.5x_floor": (("startup_seconds",), lambda: res["startup_seconds"] <= 1.5 * res["startup_floor_seconds"]),
        "reproducible": (("reproducible",), lambda: bool(res["reproducible"])),
        "suite_passes": (("suite_returncode",), lambda: res["suite_returncode"] == 0),
    }
    res["criteria"] = {name: fn() for name, (keys, fn) in checks.items() if crit(*keys)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
