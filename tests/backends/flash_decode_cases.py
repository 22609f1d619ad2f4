"""Cases shared by the flash-decoding tests (not a test module: no ``test_`` prefix): the PyTorch spec runs all
of them in test_flash_decode.py, the Triton kernels the same ones in Triton's interpreter
(flash_decode_interpreter_cases.py), at sizes the interpreter runs in a few seconds.

Each case is ``(b, h, h_kv, t_q, t_k, num_splits, options)``; options are backend keywords, with ``"sinks"``
and ``"alibi"`` placeholders made tensors by :func:`make_options` (and a ``kv_lens`` tuple made an int64
tensor). Error bounds: FlashAttention's rule against the float64 reference (flash_reference.py), forward only:
out (and lse) within 2x naive's error.
"""

from __future__ import annotations

import torch
from flash_reference import assert_matches_reference, make_inputs
from flash_triton_checks import alibi_slopes, sinks_for

from attnlab.backends import AttentionSpec, Backend

__all__ = ["CASES", "assert_case", "make_options", "with_splits"]

#: Every feature at once (the placeholders are made tensors by make_options).
ALL_OPTIONS = {"window": 20, "softcap": 3.0, "sinks": "sinks", "alibi_slopes": "alibi", "return_lse": True}

CASES = {  # name: (b, h, h_kv, t_q, t_k, num_splits, options)
    "decode_one_query_gqa_8_1": (2, 8, 1, 1, 77, 3, {}),
    "three_queries_mha_4_4": (1, 4, 4, 3, 50, 2, {}),
    "ragged_one_split": (1, 4, 2, 2, 37, 1, {}),
    "more_splits_than_chunks": (1, 4, 2, 1, 19, 64, {}),
    "default_splits": (1, 4, 2, 4, 61, None, {}),
    "non_causal": (1, 4, 2, 3, 45, 3, {"causal": False}),
    "window": (1, 8, 2, 3, 70, 4, {"window": 9}),
    "window_one_key": (1, 4, 4, 2, 40, 2, {"window": 1}),
    "softcap": (1, 4, 1, 2, 50, 3, {"softcap": 2.0}),
    "sinks": (2, 4, 2, 2, 33, 2, {"sinks": "sinks"}),
    "alibi": (1, 4, 2, 3, 40, 3, {"alibi_slopes": "alibi"}),
    "rows_without_keys": (1, 4, 2, 9, 4, 2, {"sinks": "sinks"}),
    "rows_without_keys_window": (1, 4, 4, 6, 3, 3, {"window": 2}),
    "everything_with_lse": (2, 8, 2, 3, 66, 3, ALL_OPTIONS),
    "lse_rows_without_keys": (1, 4, 1, 8, 5, 2, {"return_lse": True}),
    # Per-row key lengths (cache_seqlens): ragged rows, one of a single key, splits past a row's length.
    "kv_lens_decode_gqa_4_1": (3, 4, 1, 1, 77, 3, {"kv_lens": (77, 1, 30)}),
    "kv_lens_non_causal": (2, 4, 2, 3, 45, 4, {"causal": False, "kv_lens": (45, 7), "return_lse": True}),
    "kv_lens_default_splits": (2, 4, 2, 2, 61, None, {"kv_lens": (5, 61)}),
    # The second row has 2 keys for 3 queries: its first query sees none (zeros, lse -inf).
    "kv_lens_everything": (3, 8, 2, 3, 66, 3, {**ALL_OPTIONS, "window": 9, "kv_lens": (66, 2, 40)}),
}


def make_options(options: dict, h: int) -> dict:
    """The case's options with the ``"sinks"`` / ``"alibi"`` placeholders made float32 tensors (h,)."""
    made = dict(options)
    if made.get("sinks") == "sinks":
        made["sinks"] = sinks_for(h)
    if made.get("alibi_slopes") == "alibi":
        made["alibi_slopes"] = alibi_slopes(h)
    if "kv_lens" in made:
        made["kv_lens"] = torch.tensor(made["kv_lens"])
    return made


def with_splits(backend: Backend, num_splits: int | None):
    """``backend`` called like a registry entry, with an explicit ``num_splits`` (None: the heuristic)."""
    extras = {} if num_splits is None else {"num_splits": num_splits}
    return lambda q, k, v, **options: backend.attend(q, k, v, AttentionSpec(**options), **extras)


def assert_case(backend: Backend, name: str, dtype: torch.dtype = torch.float32, head_dim: int = 16) -> None:
    """FlashAttention's rule (forward) for ``backend`` on case ``name``, under no_grad."""
    b, h, h_kv, t_q, t_k, num_splits, options = CASES[name]
    q, k, v, dout = make_inputs(b, h, t_q, t_k, head_dim, h_kv=h_kv, dtype=dtype, seed=len(name))
    options = make_options(options, h)
    with torch.no_grad():
        assert_matches_reference(with_splits(backend, num_splits), q, k, v, dout, grads=False, **options)
