"""Shared pieces of the raw-text benchmarks (`muse`, `wmdp`).

TOFU-shaped data is question/answer pairs (`data.prompting.PromptFormatter`); MUSE-News and the
WMDP-shaped hazard benchmark are raw text. This module turns raw text (or token ids) into the
engine's `EncodedQA` rows with labels on every token after the first (a plain language-modelling
loss: no prompt part), saves and loads the tiny models, and runs any registered unlearning method
on such rows through the one training loop (`training.loop.Unlearner`). Fine-tuning on rows is
`training.finetune.finetune_rows`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.prompting import IGNORE_INDEX, EncodedQA, PromptFormatter
from ..errors import ConfigError
from ..files import atomic_dir
from ..training.loop import UnlearnData, Unlearner
from ..training.resolve import MethodRun, resolve_method


def encode_ids(ids: Sequence[int], max_length: int | None = None) -> EncodedQA:
    """An LM row from token ids: labels = the ids themselves except the first token (which nothing
    predicts; usually the BOS). Cut to `max_length` tokens from the right."""
    ids = [int(i) for i in ids][: max_length or None]
    if len(ids) < 2:
        raise ConfigError("a text row needs at least 2 tokens")
    return EncodedQA(input_ids=ids, labels=[IGNORE_INDEX] + ids[1:], prompt_len=1)


def text_ids(tokenizer: Any, text: str, *, bos: bool) -> list[int]:
    """`text` tokenised without the tokenizer's own special tokens, with a BOS in front when asked."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if bos and tokenizer.bos_token_id is not None:
        ids = [int(tokenizer.bos_token_id)] + ids
    return ids


def encode_text(tokenizer: Any, text: str, *, bos: bool = True, eos: bool = False,
                max_length: int | None = None) -> EncodedQA:
    """A raw-text LM row (see `encode_ids`); `eos` appends the EOS token."""
    ids = text_ids(tokenizer, text, bos=bos)
    if eos and tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return encode_ids(ids, max_length)


def row_tokens(rows: Sequence[EncodedQA]) -> int:
    return sum(len(r.input_ids) for r in rows)


def save_model(model: Any, tokenizer: Any, out: Path) -> None:
    """`save_pretrained` to a temporary folder, then rename (a half-written model is never cached)."""
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))


def cached_tokenizer(folder: Path, texts: Callable[[], Iterable[str]], vocab_size: int) -> Any:
    """The BPE tokenizer saved in `folder`, or one trained on `texts()` and saved there
    atomically (callers building a cache entry hold its lock)."""
    if (folder / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    from ..models.tiny import train_bpe_tokenizer

    with atomic_dir(folder) as tmp:
        return train_bpe_tokenizer(texts(), vocab_size, tmp)


def load_model(path: str | Path) -> tuple[Any, Any]:
    """A saved tiny model and its tokenizer, float32, eval mode."""
    from ..models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(path), dtype="float32" if not torch.cuda.is_available() else None)
    model.eval()
    return model, tok


def unlearn_rows(model: Any, fmt: PromptFormatter, run: MethodRun, forget: Sequence[EncodedQA],
                 retain: Sequence[EncodedQA], *, benchmark_yaml: Mapping[str, Any] | None = None,
                 base_train: Mapping[str, Any] | None = None, run_dir: str | Path | None = None,
                 stage1_epochs: int = 0,
                 evaluate: Callable[[Any], dict[str, Any]] | None = None) -> tuple[Any, dict[str, Any]]:
    """Unlearn `forget` (keeping `retain`) with one method through `Unlearner`; returns the
    unwrapped model (trained in place) and the training record. `evaluate(model) -> summary` runs
    every `train.eval_every_epochs` epochs, or once after epoch `stage1_epochs` when `0 <
    stage1_epochs < epochs` (it may raise to stop the run: staged evaluation)."""
    resolved = resolve_method(run, benchmark_yaml, base_train)
    spec, params, cfg = resolved.spec, resolved.loss, resolved.train
    if spec.batch_hook_factory is not None or spec.build_data is not None:
        raise ConfigError(f"method {spec.name} needs TOFU-shaped question/answer data (it rewrites the answers)")
    if "alt" in spec.needs_for(params):
        raise ConfigError(f"method {spec.name} needs alternative answers (alt), which raw-text settings lack")
    if 0 < int(stage1_epochs) < cfg.epochs:
        cfg.eval_every_epochs = int(stage1_epochs)
    unlearner = Unlearner(model, fmt, spec, params, UnlearnData(forget=list(forget), retain=list(retain)),
                          cfg, run_dir=run_dir, evaluate=evaluate if cfg.eval_every_epochs else None)
    record = unlearner.run()
    final = unlearner.unwrapped()
    if cfg.lora:
        final = final.merge_and_unload()
    final.eval()
    record.update(method=spec.name, lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size,
                  loss_params={k: v for k, v in params.items() if k not in {"direction", "code"}})
    return final, record


# ------------------------------------------------------------------------------------------------
# options and run files


class OptionsMixin:
    """For a prepared raw-text setting with an `options` field (the search's / CLI's options)."""

    options: dict[str, Any]

    def fraction(self, fraction: float | None = None) -> float:
        """The search part's fraction: `fraction`, else the options' `search_fraction` (0.5)."""
        return float(self.options.get("search_fraction", 0.5)) if fraction is None else float(fraction)

    def method_run(self, run: MethodRun, seed: int | None = None) -> MethodRun:
        """`run` over the options' shared `loss` / `train` overrides (and the run's seed)."""
        from ..training.resolve import method_run

        out = method_run(run)
        out.loss = {**dict(self.options.get("loss") or {}), **out.loss}
        out.train = {**dict(self.options.get("train") or {}), **out.train}
        if seed is not None:
            out.train["seed"] = int(seed)
        return out


def setting_config(cls: type, options: Mapping[str, Any] | None) -> Any:
    """A raw-text setting's config from the options: ``setting`` (overrides of `cls`, nested or
    dotted keys), ``cache_dir`` or ``prepare.cache_dir`` (the search driver pins it), ``threads``.
    TOFU-only keys (``data``, ``forget_split``, ``eval``...) are ignored."""
    from ..config import apply_overrides

    options = dict(options or {})
    cfg = cls()
    apply_overrides(cfg, dict(options.get("setting") or {}))
    prep = options.get("prepare") or {}
    cache = str(options.get("cache_dir") or (prep.get("cache_dir") if isinstance(prep, Mapping) else "") or "")
    if cache and not cfg.cache_dir:
        cfg.cache_dir = cache
    if options.get("threads"):
        torch.set_num_threads(int(options["threads"]))
    return cfg


def write_run_files(run_dir: str | Path | None, result: Any) -> None:
    """RUN_DIR/results.json (the full evaluation) and RUN_DIR/train.json (the training record)."""
    if not run_dir:
        return
    from ..training.loop import write_json

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(run_dir) / "results.json", result.results)
    write_json(Path(run_dir) / "train.json", result.train)
