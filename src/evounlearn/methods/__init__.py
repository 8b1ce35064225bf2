"""Unlearning methods: one small file each, registered by name (see base.py for the contract)."""

from __future__ import annotations

import importlib
import pkgutil

from .base import METHODS, MethodInputs, MethodSpec, SideOutputs, get_method, register_method
from .resolve import MethodRun, resolve_method

__all__ = ["METHODS", "MethodInputs", "MethodRun", "MethodSpec", "SideOutputs", "get_method", "load_all",
           "register_method", "resolve_method"]

_LOADED = False


def load_all() -> None:
    """Import every module in this package so that its @register_method runs."""
    global _LOADED
    if _LOADED:
        return
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in {"base", "resolve"}:
            importlib.import_module(f"{__name__}.{mod.name}")
    _LOADED = True
