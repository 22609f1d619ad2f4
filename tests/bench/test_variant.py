"""Benchmarking attention variants: validation, the FLOPs of the visible pairs, rows that run or say why not."""

import math
import re

import pytest
import torch
from bench_sizes import TINY

from attnlab.backends import AttentionSpec
from attnlab.backends.common import key_bounds
from attnlab.bench import AttentionVariant, BenchConfig, attention_flops, run_benchmark
from attnlab.bench.flops import visible_pairs
from attnlab.cli import build_parser
from attnlab.cli.bench import config_from_args


@pytest.mark.parametrize(
    ("t", "window", "seq_lens"),
    [(10, None, None), (10, 3, None), (10, 3, (4, 6)), (7, 20, (1, 6)), (9, 1, None), (300, 64, (1, 17, 128, 154))],
)
def test_visible_pairs_count_the_keys_each_query_sees(t, window, seq_lens):
    # Independent count: the backends' per-query key interval lo <= j <= hi.
    lo, hi = key_bounds(t, t, AttentionSpec(window=window, seq_lens=seq_lens))
    assert visible_pairs(t, window=window, seq_lens=seq_lens) == int((hi - lo + 1).clamp(min=0).sum())


def test_a_window_makes_attention_flops_linear_in_t():
    def attention_part(t: int) -> float:  # the projections are linear in t anyway; subtract them
        plain = dict(batch=1, seq_len=t, d_model=64, num_heads=4)
        return attention_flops(**plain, window=16) - attention_flops(**plain, window=1)

    assert attention_part(4096) / attention_part(1024) == pytest.approx(4.0, rel=0.01)
    full = attention_flops(batch=1, seq_len=4096, d_model=64, num_heads=4)
    assert full / attention_flops(batch=1, seq_len=4096, d_model=64, num_heads=4, window=256) > 5


def test_gqa_shrinks_the_key_and_value_projections():
    mha = attention_flops(batch=1, seq_len=1, d_model=64, num_heads=8)  # one token: projections only (+1 pair)
    mqa = attention_flops(batch=1, seq_len=1, d_model=64, num_heads=8, num_kv_heads=1)
    pair = 4 * 64  # one query-key pair: a dot product and a weighted sum over head_dim * h = d_model features
    assert mha - pair == 2 * 64 * (4 * 64)
    assert mqa - pair == 2 * 64 * (2 * 64 + 2 * 8)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_kv_heads": 0}, "num_kv_heads must be a positive integer, got 0"),
        ({"window": True}, "window must be a positive integer, got True"),
        ({"packed_len": -3}, "packed_len must be a positive integer, got -3"),
        ({"softcap": math.inf}, "softcap must be a finite number > 0, got inf"),
        ({"sinks": 1}, "sinks must be True or False, got 1"),
    ],
)
def test_bad_variants_are_refused(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        AttentionVariant(**options)


def test_kv_heads_must_divide_the_heads_of_every_point():
    with pytest.raises(ValueError, match="num_kv_heads 3 must divide num_heads 4"):
        BenchConfig(variant=AttentionVariant(num_kv_heads=3), **TINY)


def test_packing_splits_each_row():
    assert AttentionVariant(packed_len=10).seq_lens(25) == (10, 10, 5)
    assert AttentionVariant(packed_len=10).seq_lens(20) == (10, 10)
    assert AttentionVariant().seq_lens(20) is None


def test_cli_flags_become_the_variant():
    args = build_parser().parse_args(
        ["bench", "--kv-heads", "2", "--window", "8", "--softcap", "30", "--sinks", "--packed-len", "12"]
    )
    config = config_from_args(args)
    assert config.variant == AttentionVariant(num_kv_heads=2, window=8, softcap=30.0, sinks=True, packed_len=12)


def test_a_variant_run_times_what_can_do_it_and_says_why_the_others_cannot():
    variant = AttentionVariant(num_kv_heads=2, window=8, softcap=30.0, sinks=True, packed_len=12)
    config = BenchConfig(
        impls=("flash_torch", "fused_qkv", "sdpa", "wrapper"),
        device="cpu",
        modes=("forward",),
        measure_memory=False,
        variant=variant,
        **TINY,
    )
    rows = {row.impl: row for row in run_benchmark(config).rows}
    for name in ("flash_torch", "fused_qkv"):
        assert rows[name].status == "ok", rows[name].note
        # Against the float64 reference with the same options (packed sequences run one by one there):
        # float32 rounding at d_model 32 stays near 1e-7; a mask that ignores the window or the packing errs
        # by 1e-2 or more.
        assert rows[name].max_abs_err < 1e-5
        expected = attention_flops(
            batch=2, seq_len=32, d_model=32, num_heads=4, num_kv_heads=2, window=8, seq_lens=(12, 12, 8)
        )
        assert rows[name].flops == expected
    assert (rows["sdpa"].status, rows["sdpa"].note) == ("unsupported", "does not support window")
    assert (rows["wrapper"].status, rows["wrapper"].note) == ("unsupported", "does not support num_kv_heads")


def test_packing_needs_an_implementation_that_packs():
    config = BenchConfig(
        impls=("einsum",), device="cpu", modes=("forward",), measure_memory=False,
        variant=AttentionVariant(packed_len=8), **TINY,
    )  # fmt: skip
    (row,) = run_benchmark(config).rows
    assert (row.status, row.note) == ("unsupported", "cannot pack sequences (seq_lens)")


def test_modules_pack_sequences_like_running_them_alone():
    from attnlab import build

    module = build("flash_torch", d_in=16, d_out=16, num_heads=4, context_length=32)
    x = torch.randn(2, 10, 16)  # (b, t, d_in)
    with torch.no_grad():
        packed = module(x, seq_lens=[3, 7])  # (b, t, d_out)
        alone = torch.cat([module(x[:, :3]), module(x[:, 3:])], dim=1)  # (b, t, d_out)
    # Same kernels on the same rows; only the tiling differs: float32 rounding, relative to the magnitude.
    assert (packed - alone).abs().max() <= 1e-6 * alone.abs().max()
    with pytest.raises(ValueError, match="Ch03Attention cannot pack sequences"):
        build("ch03", d_in=16, d_out=16, num_heads=4, context_length=32)(x, seq_lens=[3, 7])


def test_empty_sweep_items_are_an_error_not_skipped():
    from attnlab.bench import Sweep

    with pytest.raises(ValueError, match="must be comma-separated integers"):
        Sweep.parse("seq=4,,8")


def test_mode_is_refused_with_the_model_benchmark():
    from attnlab.cli.bench import model_config_from_args

    args = build_parser().parse_args(["bench", "--model", "gpt2", "--mode", "backward"])
    with pytest.raises(ValueError, match="--mode does not apply with --model"):
        model_config_from_args(args)
