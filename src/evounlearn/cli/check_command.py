"""`evounlearn check LOSS.py [--train] [--steps N]`: validate a loss file as the search does (search/loss_check.py)."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from ..search.loss_check import command

    return command(args)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="validate a loss file as the search does (static check + probes in a sandboxed worker); "
        "exit 0 when every function is valid, 2 otherwise",
    )
    p.add_argument("loss_file", help="a .py file with def loss_fn(...) (and loss_fn_<k>, helpers)")
    p.add_argument("--train", action="store_true",
                   help="also train each valid function as long as one search candidate on the default "
                   "benchmark, training guards on")
    p.add_argument("--steps", type=_positive, default=None, metavar="N",
                   help="with --train: stop each training after N optimizer steps (implies --train; default: as long "
                        "as one search candidate trains)")
    p.set_defaults(func=_run)


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--steps must be a whole number >= 1, not {text!r}")
    return n
