"""The offline proposer: evolution of loss expression trees (`tree`), no LLM."""

from .proposer import OfflineConfig, OfflineProposer

__all__ = ["OfflineConfig", "OfflineProposer"]
