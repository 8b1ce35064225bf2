"""The quantization attack (Zhang et al., ICLR'25, "Catastrophic failure of LLM unlearning via
quantization"): reload the unlearned model in 8-bit or 4-bit the way bitsandbytes does and see
whether the forgotten answers come back. Simulated in torch (quantize, then dequantize back to the
model's dtype), so it runs on a CPU; the weights it produces are the ones bitsandbytes' kernels
multiply with (tests/test_attacks.py checks them against bitsandbytes where it runs).

- **8-bit** (`load_in_8bit`, LLM.int8 vector-wise): per output row, `scale = absmax(row) / 127`,
  `q = round(w * (127 / absmax))` (round half to even, as `torch.round`), dequantized as
  `q * absmax * (1 / 127)` (bitsandbytes' `int8_vectorwise_dequant`). LLM.int8's outlier
  decomposition (input columns with |x| >= 6 computed in 16-bit at inference) is NOT simulated: it
  acts on activations, not on stored weights, and only makes the quantized model closer to the
  original; the attack here is the stronger, pure-int8 weight rounding.
- **4-bit** (`load_in_4bit`; FP4 by default as in transformers / Zhang et al., NF4 as an option):
  the flattened weight in blocks of 64 (`blocksize`), each block scaled by `1 / absmax(block)`
  (the kernels multiply by the reciprocal), clamped to [-1, 1], rounded to the nearest codebook
  value (bitsandbytes' `get_4bit_type` tables, below), dequantized as `code * absmax` (float32).
  No double quantization of the block scales (`bnb_4bit_use_double_quant` defaults to False).
  The tables are the CUDA kernels' (`get_4bit_type`: FP4 = the e2m1 values / 12); bitsandbytes'
  CPU/XPU fallback (`backends/utils.py: _FP4_QUANT_TABLE`) rounds FP4 to 4 decimals (0.0052,
  0.6667, ...), so its dequantized weights differ from the GPU's in the 5th digit.

What bitsandbytes quantizes: through transformers, every `nn.Linear` except the ones it keeps in
full precision (`lm_head` / the output embedding: `llm_int8_skip_modules` defaults to the output
layer); embeddings and norms are never bitsandbytes modules. The attack does the same: the weight
of every Linear layer but `lm_head` (a tied output embedding is the input embedding's weight,
left as is); biases stay in full precision (bitsandbytes keeps them in the compute dtype).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..errors import ConfigError
from .config import QuantizeOptions

#: bitsandbytes' NF4 codebook (functional.get_4bit_type("nf4"); QLoRA's normal-float values)
NF4_CODE: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)
#: bitsandbytes' FP4 (e2m1) codebook by code: get_4bit_type("fp4") = these / 12 (bit 3 = sign)
FP4_RAW: tuple[float, ...] = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
                              -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0)
FP4_CODE: tuple[float, ...] = tuple(v / 12.0 for v in FP4_RAW)
CODEBOOKS = {"nf4": NF4_CODE, "fp4": FP4_CODE}
QUANT_TYPES = ("fp4", "nf4")
BITS = (8, 4)
INT8_INV_127 = 7.874015718698502e-3  # bitsandbytes' 1/127 constant (int8_vectorwise_dequant)


def codebook(quant_type: str) -> torch.Tensor:
    """The 16 float32 values of a 4-bit code (index = the 4-bit code)."""
    if quant_type not in CODEBOOKS:
        raise ConfigError(f"unknown 4-bit type {quant_type!r} (known: {', '.join(QUANT_TYPES)})")
    return torch.tensor(CODEBOOKS[quant_type], dtype=torch.float32)


def int8_rowwise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, per-row absmax float32) of a 2-D weight, as bitsandbytes' int8_vectorwise_quant."""
    a = w.detach().float().reshape(w.shape[0], -1)
    absmax = a.abs().amax(dim=1)
    scale = torch.where(absmax > 0, 127.0 / absmax, torch.zeros_like(absmax))
    q = torch.round(a * scale.unsqueeze(1)).clamp(-127, 127).to(torch.int8)
    return q, absmax


def int8_dequantize(q: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    return (q.float() * absmax.unsqueeze(1)) * INT8_INV_127


def blockwise_4bit(w: torch.Tensor, quant_type: str = "fp4", blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 in 0..15 with w's numel, per-block absmax float32): blocks of `blocksize` over
    the flattened tensor (the last one may be shorter), each scaled by 1/absmax, clamped to [-1, 1]
    and rounded to the nearest codebook value (a tie goes to the lower code index)."""
    code = codebook(quant_type)
    flat = w.detach().float().reshape(-1)
    n = flat.numel()
    blocks = -(-n // blocksize)
    padded = torch.zeros(blocks * blocksize, dtype=torch.float32)
    padded[:n] = flat
    b = padded.view(blocks, blocksize)
    absmax = b.abs().amax(dim=1)
    inv = torch.where(absmax > 0, 1.0 / absmax, torch.zeros_like(absmax))
    scaled = (b * inv.unsqueeze(1)).clamp(-1.0, 1.0).reshape(-1)[:n]
    # argmin of |x - code| returns the first (lowest-index) minimum, as bitsandbytes' lookup does
    idx = torch.empty(n, dtype=torch.uint8)
    for s in range(0, n, 1 << 18):  # chunks: a [n, 16] distance matrix per chunk only
        part = scaled[s : s + (1 << 18)]
        idx[s : s + part.numel()] = (part.unsqueeze(1) - code).abs().argmin(dim=1).to(torch.uint8)
    return idx, absmax


def blockwise_dequantize(idx: torch.Tensor, absmax: torch.Tensor, quant_type: str = "fp4",
                         blocksize: int = 64) -> torch.Tensor:
    code = codebook(quant_type)
    n = idx.numel()
    vals = torch.zeros(absmax.numel() * blocksize, dtype=torch.float32)
    vals[:n] = code[idx.long()]
    return (vals.view(-1, blocksize) * absmax.unsqueeze(1)).reshape(-1)[:n]


def round_trip(w: torch.Tensor, opts: QuantizeOptions) -> torch.Tensor:
    """`w` quantized and dequantized (float32, w's shape)."""
    if opts.bits == 8:
        q, absmax = int8_rowwise(w)
        return int8_dequantize(q, absmax).reshape(w.shape)
    idx, absmax = blockwise_4bit(w, opts.quant_type, opts.blocksize)
    return blockwise_dequantize(idx, absmax, opts.quant_type, opts.blocksize).reshape(w.shape)


def quantized_modules(model: Any, skip: str = "lm_head") -> list[str]:
    """Names of the Linear modules whose weights bitsandbytes would quantize (all but `skip`)."""
    skipped = {s.strip() for s in skip.split(",") if s.strip()}
    return [name for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and name.split(".")[-1] not in skipped and name not in skipped]


@torch.no_grad()
def quantize_model(model: Any, opts: QuantizeOptions | None = None) -> Any:
    """A copy of `model` with every quantized Linear weight replaced by its round trip; the input
    model is never changed."""
    opts = opts or QuantizeOptions()
    opts.check()
    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    for name in quantized_modules(out, opts.skip):
        lin = mods[name]
        w = lin.weight
        if any(w is p for p in _tied_inputs(out)):
            continue  # a weight shared with the input embedding stays in full precision
        lin.weight = torch.nn.Parameter(round_trip(w, opts).to(dtype=w.dtype, device=w.device),
                                        requires_grad=w.requires_grad)
    return out


def _tied_inputs(model: Any) -> list[torch.Tensor]:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return [emb.weight] if emb is not None and hasattr(emb, "weight") else []
