"""The `evounlearn` command: machine unlearning for LLMs (run `evounlearn COMMAND --help`).

Each subcommand takes an optional YAML config (`--config`) and `key=value` overrides.
Bad input ends with a one-line `error: ...` message and exit code 2, in well under a second:
arguments, options (method and benchmark names, key=value against the config dataclasses),
every data split and the model a command reads are checked before torch or transformers are
imported. The CPU thread default is set before torch is imported (`evounlearn.threads`); a
command line run ends right after its output is flushed (`main`).
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import logging
import os
import sys
from typing import Any, NoReturn

from ..errors import ConfigError, EvoUnlearnError
from .common import benchmark_of, is_main_process, print_report

log = logging.getLogger("evounlearn")


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (`evounlearn unlearn: error: ...`) and defaults in the help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default: the value when there is one, `off` for a flag; an option
    without a value (None) says its default in its own help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        if action.default is False:
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", help="a registered benchmark or alias (default: generated; "
                   "docs/ARCHITECTURE.md lists them)")
    p.add_argument("--data", help="'generated', a TOFU-shaped folder, or a Hub dataset id (default: generated)")
    p.add_argument("--tofu-dir", help="local folder with TOFU's files, same as --data PATH (default: none)")
    p.add_argument("--split", help="forget split: forget01, forget05 or forget10 (default: forget10)")


def _overrides(args: argparse.Namespace) -> list[str]:
    ov = list(args.overrides or [])
    data = getattr(args, "tofu_dir", None) or getattr(args, "data", None)
    if data:
        ov.append(f"data={data}")
    if getattr(args, "split", None):
        ov.append(f"forget_split={args.split}")
    return ov


def cmd_prepare(args: argparse.Namespace) -> int:
    report = benchmark_of(args).cli_prepare(args.config, _overrides(args), force=args.force, export=args.export,
                                            import_from=args.import_from)
    print_report(report)
    return 0


def split_run_dir(overrides: list[str]) -> tuple[str | None, list[str]]:
    """`evounlearn eval RUN_DIR [key=value ...]`: (the run directory or None, the key=value items).
    A positional item without `=` must be an existing folder (one at most)."""
    run_dirs = [o for o in overrides if "=" not in o]
    if not run_dirs:
        return None, overrides
    if len(run_dirs) > 1:
        raise ConfigError(f"eval takes one run directory, not {len(run_dirs)} ({' '.join(run_dirs)})")
    if not os.path.isdir(run_dirs[0]):
        raise ConfigError(f"{run_dirs[0]!r} is neither a run directory nor a key=value override")
    return run_dirs[0], [o for o in overrides if "=" in o]


def cmd_eval(args: argparse.Namespace) -> int:
    from ..benchmarks.runs import EvalRequest

    run_dir, overrides = split_run_dir(list(args.overrides or []))
    if run_dir and (args.model or args.adapter):
        raise ConfigError("give either a run directory or --model/--adapter, not both")
    args.overrides = overrides
    req = EvalRequest(args.config, _overrides(args), args.model, args.adapter, args.retain_results,
                      args.reference_model, args.out, args.attacks, args.attack_samples, args.attack_temperature,
                      run_dir=run_dir, attack_options=list(args.attack_option or []))
    report = benchmark_of(args).cli_eval(req)
    print_report(report)
    if args.json and is_main_process():
        print(json.dumps(report.summaries))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="evounlearn", description=__doc__.splitlines()[0],
                    epilog="commands: " + ", ".join(COMMANDS))
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the libraries' own logs and loading bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("prepare", help="train (or fetch from cache) the target model and the retain oracle")
    _data_args(p)
    p.add_argument("--config", help="YAML file with PrepareConfig fields (default: none)")
    p.add_argument("--force", action="store_true", help="retrain even when cached (with --import: replace the "
                   "cache's preparation by the artifact's)")
    p.add_argument("--export", metavar="FILE", help="write the prepared target, oracle and their results to an "
                   "artifact file (.tar or .tar.gz) that --import installs on another machine (default: none)")
    p.add_argument("--import", dest="import_from", metavar="FILE", help="install a prepared artifact (from --export) "
                   "instead of training: every machine then scores against the same models (default: none)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.epochs=30 generated.authors=20")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("eval", help="evaluate models with the benchmark's suite (TOFU: the full suite, any model, "
                       "or a run directory)")
    _data_args(p)
    p.add_argument("--model", help="model path or Hub id (default: the run directory's model, else the prepared "
                   "target and retain oracle)")
    p.add_argument("--adapter", help="LoRA adapter folder to load on top of --model (default: none)")
    p.add_argument("--retain-results", help="a retain run's results JSON, for forget quality and PrivLeak "
                   "(default: the prepared retain oracle's, when it is in the cache)")
    p.add_argument("--reference-model", help="model for the reference-model MIA (default: none)")
    p.add_argument("--out", help="folder for the results JSON files (default: none, nothing written)")
    p.add_argument("--json", action="store_true", help="also print the summaries as one JSON line")
    p.add_argument("--attacks", help="attacks on the forget split: recovery attacks on the model (quantize = "
                   "quantize_8bit,quantize_4bit; quantize_nf4, relearn, relearn_related, finetune) and generation "
                   "attacks (sampling, prefill), comma-separated (default: none)")
    p.add_argument("--attack-option", action="append", metavar="KEY=VALUE",
                   help="a recovery attack's option, repeatable: e.g. relearn.steps=100, finetune.file=rows.jsonl, "
                   "quantize.blocksize=128, oracle=false (default: each attack's paper defaults, docs/METRICS.md \"Recovery attacks\")")
    p.add_argument("--attack-samples", type=int, default=16, help="samples per question (sampling attack)")
    p.add_argument("--attack-temperature", type=float, default=1.0, help="temperature (sampling attack)")
    p.add_argument("--config", help="YAML file with PrepareConfig fields (default: none)")
    p.add_argument("overrides", nargs="*", metavar="[RUN_DIR] key=value",
                   help="an `unlearn` run directory (its model, with its config and part), then key=value, "
                   "e.g. eval.max_new_tokens=100")
    p.set_defaults(func=cmd_eval)

    from . import extra_commands, tune_command

    extra_commands.register(sub)
    tune_command.register(sub)
    __import__("evounlearn.cli.check_command", fromlist=["register"]).register(sub)
    return parser


def quiet_libraries(verbose: bool) -> None:
    """The one place that silences the libraries: transformers / datasets / hub logs at error
    level and without their loading bars, absl (rouge-score's "Using default tokenizer.") at
    warning; `--verbose` keeps them. Environment variables, so that nothing heavy is imported
    here (the libraries read them when the commands import them)."""
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "transformers", "huggingface_hub", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if verbose:
        return
    for key, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DATASETS_VERBOSITY", "error"),
                       ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                       ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    # absl installs its own logger class: configure it through its own API, when something imports
    # it (rouge-score, at evaluation): importing it here cost 0.15-0.4 s on every command.
    after_import("absl.logging", lambda absl_logging: absl_logging.set_verbosity(absl_logging.WARNING))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `callback(module)` right after `name` is first imported (a one-shot meta-path hook)."""

    def __init__(self, name: str, callback: Any) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            try:
                self.callback(module)
            except Exception:  # configuring a library's logs never breaks the import
                pass

        loader.exec_module = exec_module
        return spec


def after_import(name: str, callback: Any) -> None:
    """`callback(module)` now if `name` is imported, else right after its first import."""
    if name in sys.modules:
        callback(sys.modules[name])
    elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, callback))


#: every subcommand, in the order of the help
COMMANDS = ("prepare", "eval", "unlearn", "compare", "evolve", "report", "tune", "check")
#: subcommands that train or evaluate (they get the thread default; the others import no torch)
COMPUTING = frozenset({"prepare", "eval", "unlearn", "evolve", "tune"})


def run_command(argv: list[str]) -> int:
    """Parse `argv` and run its subcommand; returns the exit code (2: bad input, one line)."""
    parser = build_parser()
    if not argv:  # a bare `evounlearn`: the help, not an error
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet_libraries(args.verbose)
    if args.command in COMPUTING and "torch" not in sys.modules:
        from ..threads import configure_threads

        choice = configure_threads()
        log.debug("threads: %d (%s; %d usable cores, %s free)", choice.threads, choice.source, choice.cpus,
                  "?" if choice.free is None else f"{choice.free:.1f}")
    try:
        return args.func(args)
    except EvoUnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """The `evounlearn` entry point. Called with `argv` (tests, scripts): returns the exit code.
    Called without (the command line): exits as soon as the output is flushed, skipping the
    interpreter's teardown of torch and friends (1-1.5 s of nothing); results are written
    atomically before that, so nothing is lost. A process that started Ray or a distributed
    group exits normally (their shutdown hooks stop other processes)."""
    if argv is not None:
        return run_command(list(argv))
    rc = run_command(sys.argv[1:])
    fast_exit(rc)
    return rc


def fast_exit(rc: int) -> None:
    """Flush everything and end the process at once (`os._exit`), unless a library with
    shutdown work that matters outside this process (Ray, torch.distributed) is loaded."""
    if "ray" in sys.modules or os.environ.get("EVOUNLEARN_NO_FAST_EXIT"):
        return
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return
    except Exception:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
