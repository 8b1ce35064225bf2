"""Unlearning methods: one small file each, registered by name (see base.py for the contract)."""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    METHODS,
    MethodInputs,
    MethodSpec,
    SideOutputs,
    check_method_name,
    get_method,
    method_names,
    register_method,
)

__all__ = ["METHODS", "MethodInputs", "MethodSpec", "SideOutputs", "check_method_name", "get_method",
           "load_all", "method_names", "register_method"]

_LOADED = False


def load_all() -> None:
    """Import every module in this package so that its @register_method runs."""
    global _LOADED
    if _LOADED:
        return
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")
    _LOADED = True
