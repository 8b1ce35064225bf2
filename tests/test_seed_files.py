"""`proposer.seed_files=[...]`: a search starts from the user's own programs."""

from __future__ import annotations

from pathlib import Path

import pytest

from evounlearn.errors import ConfigError
from evounlearn.search.proposers import proposer_from_section
from evounlearn.search.proposers.base import ProposalRequest

SIG = "(log_probs_forget, log_probs_retain, ref_log_probs_forget=None, ref_log_probs_retain=None):\n"


def test_seed_programs_open_every_initial_population(tmp_path: Path) -> None:
    a = tmp_path / "a.py"
    a.write_text("def scale(x):\n    return 2.0 * x\n\n"
                 f"def loss_fn{SIG}    return scale(log_probs_forget.mean()) - log_probs_retain.mean()\n\n"
                 f"def loss_fn_2{SIG}    return log_probs_forget.mean()\n")
    b = tmp_path / "b.py"
    b.write_text(f"def loss_fn{SIG}    return log_probs_forget.mean() - 0.5 * log_probs_retain.mean()\n")
    for kind in ("offline", {"kind": "offline", "offline": {}}):
        section = {"kind": "offline", "seed_files": [str(a), str(b)]} if kind == "offline" else {
            **kind, "seed_files": [str(a), str(b)]}
        proposer = proposer_from_section(section)
        out = proposer.propose(ProposalRequest(kind="initial", n=5))
        assert [p.operator for p in out[:3]] == ["seed"] * 3 and len(out) == 5
        assert out[0].code.startswith("def scale(x)") and "def loss_fn(" in out[1].code  # renamed, helpers kept
        assert "0.5 * log_probs_retain" in out[2].code
        small = proposer.propose(ProposalRequest(kind="initial", n=2))
        assert [p.code for p in small] == [p.code for p in out[:2]]  # a prefix: de-duplicated by the driver


def test_bad_seed_files_are_one_line_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        proposer_from_section({"kind": "offline", "seed_files": [str(tmp_path / "missing.py")]})
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no loss function"):
        proposer_from_section({"seed_files": [str(empty)]})
