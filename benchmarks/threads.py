"""Micro-benchmark behind the thread default (issue 20, P1): training steps per second of the tiny
recipe (and a larger model) under several thread settings, on a quiet machine and with two
busy-loop processes beside it (started and stopped here).

    python benchmarks/threads.py [--seconds 6] [--out benchmarks/results/threads.json]

Each setting runs in a fresh process (the OpenMP settings are read when torch is imported);
settings are interleaved, and each reports steps/s over `--seconds` after two warm-up steps.
Settings: `default` (torch's own: all cores, OpenMP's default spin-wait), `one` (1 thread),
`one_passive` (1 thread, OMP_WAIT_POLICY=PASSIVE), `passive` (all cores, OMP_WAIT_POLICY=PASSIVE),
`auto` (what `evounlearn.threads` chooses: the free cores, passive when some are busy).

    python benchmarks/threads.py --models tiny --conditions quiet --settings default,passive,one,auto
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

STEP = r"""
import os, sys, time
if sys.argv[1] == "auto":
    from evounlearn.threads import configure_threads
    configure_threads()
import torch
from transformers import LlamaConfig, LlamaForCausalLM
hidden, layers, seconds = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
cfg = LlamaConfig(vocab_size=2048, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
torch.manual_seed(0)
model = LlamaForCausalLM(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randint(0, 2048, (32, 64))
def step():
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    opt.step()
    opt.zero_grad()
for _ in range(2):
    step()
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    step()
    n += 1
print(n / (time.perf_counter() - t0), torch.get_num_threads())
"""

SETTINGS = {
    "default": {},
    "one": {"OMP_NUM_THREADS": "1"},
    "one_passive": {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "auto": {},
}
MODELS = {"tiny": (128, 4), "larger": (512, 8)}
#: a busy loop that ends by itself (never outlives the benchmark, even when it is killed)
BUSY = "import sys, time\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    pass\n"


def measure(setting: str, model: str, seconds: float) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    env.update(SETTINGS[setting])
    hidden, layers = MODELS[model]
    out = subprocess.run([sys.executable, "-c", STEP, setting, str(hidden), str(layers), str(seconds)], env=env,
                         capture_output=True, text=True, check=True)
    rate, threads = out.stdout.split()
    return float(rate), int(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per measurement")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats")
    ap.add_argument("--models", default="tiny,larger")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, from: " + ", ".join(SETTINGS))
    ap.add_argument("--conditions", default="quiet,busy2", help="quiet and/or busy2 (two busy-loop processes)")
    ap.add_argument("--out", default=str(HERE / "results" / "threads.json"))
    args = ap.parse_args()
    res: dict[str, object] = {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg(), "seconds": args.seconds}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `finally` stops the busy loops
    settings = args.settings.split(",")
    for cond in args.conditions.split(","):
        busy = [subprocess.Popen([sys.executable, "-c", BUSY, "3600"]) for _ in range(2 if cond == "busy2" else 0)]
        time.sleep(0.5 if busy else 0)
        try:
            for model in args.models.split(","):
                rates: dict[str, list[float]] = {s: [] for s in settings}
                threads: dict[str, int] = {}
                for _ in range(args.repeats):
                    for s in settings:
                        r, t = measure(s, model, args.seconds)
                        print(f"  {cond} {model} {s}: {r:.3f} steps/s ({t} threads)", flush=True)
                        rates[s].append(r)
                        threads[s] = t
                res[f"{cond}/{model}"] = {s: {"steps_per_s": round(statistics.median(v), 3), "threads": threads[s]}
                                          for s, v in rates.items()}
                print(cond, model, res[f"{cond}/{model}"], flush=True)
        finally:
            for p in busy:
                p.kill()
                p.wait()
    res["loadavg_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
