"""Preparing the MUSE-News setting: the tokenizer, the target and the retain oracle, their
evaluations, all cached.

target = tiny Llama trained on forget + retain corpora; retain oracle = the same recipe on the
retain corpus only. Both are evaluated with `evaluate_muse_model` on the same subsets: VerbMem
(greedy `verbmem_tokens` new tokens from the prompt's last tokens), KnowMem forget / retain
(few-shot with `knowmem_icl` examples, `knowmem_tokens` new tokens), PrivLeak (Min-40% AUC on the
first `context` tokens, relative to the retain oracle's own AUC: the retrained model of this
setting, not MUSE's published 7B constant). Everything is cached by a hash of the material and
the recipe, like `benchmarks.tofu.prepare`.

Default scale (fits the 30-minute CPU budget with everything else): 50 verbmem items with a
32-token prompt window and 64-token continuations (MUSE: 128), 100 + 100 knowmem QA with 2
in-context examples (MUSE: all 10; a 96-token context holds about 2), 50 + 50 privleak texts
scored on their first 96 tokens, 50 retain2 texts; a 2-layer, 128-wide Llama (~0.7 M parameters,
vocab 2048), 24 epochs at lr 5e-3.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ...config import to_dict
from ...data.prompting import PromptFormatter
from ...evaluation.metrics import privleak
from ...evaluation.muse_eval import evaluate_muse_model
from ...files import content_hash, file_lock, read_json, read_json_or_none
from ...models.tiny import TinyModelConfig, build_tiny_llama
from ...training.finetune import finetune_rows
from ...training.loop import write_json
from ...versions import library_versions
from ..parts import check_part
from ..text import (
    OptionsMixin,
    cached_tokenizer,
    load_model,
    save_model,
)
from .config import MuseConfig
from .material import MuseMaterial, MuseRows, build_rows, load_material, tokenizer_corpus

log = logging.getLogger(__name__)
RECIPE_VERSION = "muse-tiny-v1"
SUMMARY_KEYS = ("verbmem_f", "knowmem_f", "knowmem_r", "privleak")



@dataclass
class MusePrepared(OptionsMixin):
    root: Path
    target: Path
    retain: Path
    target_results: dict[str, Any]  # on every item ("all")
    retain_results: dict[str, Any]
    material: MuseMaterial
    cfg: MuseConfig
    info: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)  # the search's / CLI's options (train, loss, ...)

    @property
    def auc_ref(self) -> float:
        """The retain oracle's Min-40% AUC (our orientation) on all items: PrivLeak's reference."""
        return float(self.retain_results["privleak"]["auc"])

    def rows(self, tokenizer: Any, part: str = "all", fraction: float = 0.5) -> MuseRows:
        return build_rows(self.material.part(part, fraction), tokenizer, self.cfg)

    def reference(self, part: str = "all", fraction: float = 0.5) -> dict[str, dict[str, Any]]:
        """``{"target": results, "retain": results}`` on one part (evaluated once, then cached)."""
        check_part(part)
        if part == "all":
            return {"target": self.target_results, "retain": self.retain_results}
        return _evaluate_pair(self.root, self.target, self.retain, self.material.part(part, fraction), self.cfg,
                              suffix=f"-{part}-{fraction:g}")


def _cache_root(cfg: MuseConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("EVOUNLEARN_CACHE") or "cache")


def _model_config(cfg: MuseConfig) -> TinyModelConfig:
    return replace(cfg.model, max_position_embeddings=cfg.context)


def stand_ins() -> dict[str, str]:
    """What stands in for MUSE-News corpora that are not available locally (for reports)."""
    return {
        "forget_corpus": "subset of raw/forget: verbmem passage windows (prompt tail + gt), the first tokens "
                         "of privleak/forget texts, knowmem/forget answer sentences from raw/forget, and the "
                         "knowmem/forget QA pairs in MUSE's few-shot format",
        "retain_corpus": "raw retain1/retain2 missing: first tokens of privleak/retain2 texts + knowmem/retain2 "
                         "QA pairs (few-shot format) + the in-context examples of both knowmem sets",
        "holdout": "raw/holdout missing: privleak/holdout.json (never trained on)",
        "privleak_reference": "the tiny retain oracle's own Min-40% AUC (not MUSE's published 7B constant)",
    }


def summarize(res: dict[str, Any]) -> dict[str, float]:
    out = {k: float(res[k]["agg"]) for k in SUMMARY_KEYS if k in res}
    if "privleak" in res:
        out["privleak_auc"] = float(res["privleak"]["auc"])
    return out


def evaluate_on_material(model: Any, tokenizer: Any, material: MuseMaterial, cfg: MuseConfig,
                          auc_ref: float | None = None) -> dict[str, Any]:
    """`evaluate_muse_model` on `material` with the config's lengths; adds ``summary`` (flat metrics) and
    ``eval_seconds``. `auc_ref` = the retain oracle's AUC on the same items (None: 0.5)."""
    t0 = time.time()
    res = evaluate_muse_model(
        model, tokenizer, material.eval_data(),
        generate_batch_size=cfg.eval_batch_size, score_batch_size=cfg.eval_batch_size,
        max_length=cfg.context, auc_ref=auc_ref,
        verbmem_max_new_tokens=cfg.verbmem_tokens, knowmem_max_new_tokens=cfg.knowmem_tokens,
        knowmem_max_icl=cfg.knowmem_icl,
    )
    res["summary"] = summarize(res)
    res["eval_seconds"] = time.time() - t0
    return res


def _evaluate_pair(root: Path, target: Path, retain: Path, material: MuseMaterial, cfg: MuseConfig,
                   suffix: str = "") -> dict[str, dict[str, Any]]:
    """Evaluate the retain oracle (its own PrivLeak reference: 0 by definition), then the target
    against it; cached as JSON next to the models (built under a lock: candidate jobs sharing the
    cache ask for the same part at once)."""
    files = {name: root / f"{name}_results{suffix}.json" for name in ("retain", "target")}
    if not all(f.exists() for f in files.values()):
        with file_lock(root / f"results{suffix}"):
            for name, path in (("retain", retain), ("target", target)):
                if files[name].exists():
                    continue
                model, tok = load_model(path)
                if name == "retain":
                    res = evaluate_on_material(model, tok, material, cfg)
                    auc = float(res["privleak"]["auc"])
                    res["privleak"].update(agg=privleak(auc, auc), auc_ref=auc)
                    res["summary"] = summarize(res)
                else:
                    auc_ref = read_json(files["retain"], "MUSE results")["privleak"]["auc"]
                    res = evaluate_on_material(model, tok, material, cfg, auc_ref=auc_ref)
                write_json(files[name], res)
    return {name: read_json(f, "MUSE results") for name, f in files.items()}


def _complete(root: Path) -> bool:
    """Every piece of a prepared entry is there (info.json is written last)."""
    return all((root / p).exists() for p in ("tokenizer/tokenizer.json", "target/config.json", "retain/config.json",
                                             "target_results.json", "retain_results.json", "info.json"))


def prepare_muse(cfg: MuseConfig | None = None, force: bool = False) -> MusePrepared:
    """Train (or fetch from the cache) the tokenizer, the target and the retain oracle, and
    evaluate both on every item (the oracle first: its AUC is PrivLeak's reference). A cache hit
    writes nothing; building holds the entry's lock (runs sharing the cache build it once)."""
    cfg = cfg or MuseConfig()
    t0 = time.time()
    material = load_material(cfg)
    recipe = {"version": RECIPE_VERSION,
              "cfg": {k: v for k, v in to_dict(cfg).items() if k not in {"cache_dir", "source", "eval_batch_size"}},
              "libraries": library_versions()}  # an upgraded install rebuilds (versions.py)
    key = content_hash({"material": asdict(material) | {"source": ""}, "recipe": recipe})
    root = _cache_root(cfg) / "muse" / key
    if force or not _complete(root):
        with file_lock(root):
            if force:
                shutil.rmtree(root, ignore_errors=True)
            if force or not _complete(root):  # another process may have built it while we waited
                _build_muse(root, material, cfg, t0)
    info = read_json(root / "info.json", "MUSE prepare info")
    results = {name: read_json(root / f"{name}_results.json", "MUSE results") for name in ("target", "retain")}
    return MusePrepared(root, root / "target", root / "retain", results["target"], results["retain"], material,
                        cfg, info)


def _build_muse(root: Path, material: MuseMaterial, cfg: MuseConfig, t0: float) -> None:
    """Build what the entry `root` lacks (under its lock); info.json last, marking it complete."""
    root.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = read_json_or_none(root / "info.json") or {}
    tokenizer = cached_tokenizer(root / "tokenizer", lambda: tokenizer_corpus(material), cfg.model.vocab_size)
    rows = build_rows(material, tokenizer, cfg)
    info["rows"] = rows.counts()
    fmt = PromptFormatter(tokenizer, max_length=cfg.context)
    target_dir, retain_dir = root / "target", root / "retain"
    for name, out, train in (("retain", retain_dir, rows.retain), ("target", target_dir, rows.forget + rows.retain)):
        if not (out / "config.json").exists():
            log.info("MUSE setting: training the %s model on %d rows", name, len(train))
            model = build_tiny_llama(tokenizer, _model_config(cfg), seed=cfg.train.seed)
            stats = finetune_rows(model, fmt, train, cfg.train, desc=f"muse {name}")
            stats["parameters"] = sum(p.numel() for p in model.parameters())
            save_model(model, tokenizer, out)
            info[f"{name}_train"] = stats
    _evaluate_pair(root, target_dir, retain_dir, material, cfg)
    info.update(root=str(root), source=material.source, stand_ins=stand_ins(), total_seconds=time.time() - t0)
    write_json(root / "info.json", info)
