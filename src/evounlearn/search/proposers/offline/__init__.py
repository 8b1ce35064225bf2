"""The offline proposer: evolution of loss expression trees, no LLM.

- `tree`: the genome (the grammar's leaves and operators, `LossTree`, its JSON form, structural checks);
- `render`: a tree as the Python source of a `loss_fn`, and back (`tree_from_code`);
- `interpret`: a tree evaluated with torch, and the numeric monotonicity check (`check_tree`);
- `operators`: random trees and the variation operators (mutations, crossover);
- `seed_trees`: the literature losses as trees;
- `code_constants`: constant tuning of code that carries no tree;
- `diagnosis`, `directed`, `tpe`: reading a parent's metrics, mutations directed by them, TPE tuning;
- `proposer`: the `OfflineProposer` that maps request kinds to these operators.

A new grammar primitive touches `tree` (vocabulary, JSON, structure checks), `render`, `interpret`
and, to be generated, `operators`.
"""

from .proposer import OfflineConfig, OfflineProposer

__all__ = ["OfflineConfig", "OfflineProposer"]
