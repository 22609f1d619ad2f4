"""The accuracy column: each implementation's output against the float64 reference, computed cheaply.

:func:`attnlab.reference.reference_attention` loops over heads and tokens, far too slow for benchmark
sizes. It is not needed in full: sequences in a batch are independent, and causal attention's output
for the first ``t'`` tokens depends only on the first ``t'`` inputs. So the reference is computed for
batch element 0 and its first ``max_tokens`` tokens, and compared with the same slice of the output the
implementation produced on the *full* benchmark input (the very shapes and kernels being timed).
Tokens after ``max_tokens`` and other batch elements are not checked here; ``attnlab check`` compares
every output and gradient at small sizes.

Variants: the layer options go to the reference as they go to the module; packed sequences are
independent too, so the reference runs each packed sequence of the prefix on its own and concatenates.
"""

from __future__ import annotations

import torch

from ..check import max_abs_error
from ..reference import reference_attention
from ..weights import AttentionWeights
from .variant import PLAIN, AttentionVariant

__all__ = ["TOLERANCES", "output_error", "reference_prefix"]

#: Largest accepted error (max |out - ref| / max(1, max |ref|)) per dtype. Measured at the quick preset
#: (256 tokens, d_model 256): float32 4e-7, float16 5e-4, bfloat16 4e-3, the same for every
#: implementation (rounding of weights, input and output dominates). The limits leave about 10x (250x
#: for float32, whose sums grow with d_model and t) of headroom for larger sizes, while a wrong mask,
#: scale or head split errs by 1e-1 or more (a non-causal mask: 0.8 at the quick preset).
TOLERANCES: dict[str, float] = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}


def reference_prefix(
    x: torch.Tensor,
    weights: AttentionWeights,
    num_heads: int,
    max_tokens: int,
    variant: AttentionVariant = PLAIN,
) -> torch.Tensor:
    """float64 reference output for batch element 0 and its first ``max_tokens`` tokens: (1, t', d_out)."""
    prefix = x[:1, :max_tokens]  # (1, t', d_in)
    options = {"num_kv_heads": variant.num_kv_heads, "window": variant.window, "softcap": variant.softcap}
    lengths = variant.seq_lens(x.shape[1]) or (x.shape[1],)
    pieces, start = [], 0
    with torch.no_grad():
        for length in lengths:  # packed sequences never see each other: one reference call each
            if start >= prefix.shape[1]:
                break
            piece = prefix[:, start : start + length]  # (1, n, d_in)
            pieces.append(reference_attention(piece, weights, num_heads, **options))  # (1, n, d_out)
            start += length
    return torch.cat(pieces, dim=1)  # (1, t', d_out)


def output_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative max error of the matching slice of ``out`` (b, t, d_out) against ``reference`` (1, t', d_out)."""
    num_tokens = reference.shape[1]
    return max_abs_error(out[:1, :num_tokens], reference)
