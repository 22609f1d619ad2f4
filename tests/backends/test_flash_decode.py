"""flash_decode_torch (split-KV decoding in PyTorch) and flash_decode_triton (its Triton kernels).

Error bounds: FlashAttention's rule, forward only (flash_reference.py): out and lse within 2x the naive
backend's error against the float64 reference. The Triton kernels run on the CPU only in Triton's
interpreter, which must be switched on before triton is imported: their cases (flash_decode_cases.py, the
same the PyTorch spec passes here) run in a subprocess, like test_flash_triton.py's.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flash_decode_cases import CASES, assert_case, with_splits
from flash_reference import assert_matches_reference, make_inputs

from attnlab.backends import BACKENDS, AttentionSpec, backends_with, flash_decode_triton
from attnlab.backends import flash_decode_torch as decode

flash_decode_torch = BACKENDS["flash_decode_torch"]
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETER_CASES = Path(__file__).with_name("flash_decode_interpreter_cases.py")
NAMES = ("flash_decode_torch", "flash_decode_triton")


@pytest.mark.parametrize("name", CASES)
def test_case(name):
    assert_case(flash_decode_torch, name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes(dtype):
    assert_case(flash_decode_torch, "everything_with_lse", dtype=dtype)


@pytest.mark.parametrize("t_q", [1, 4, 16])
@pytest.mark.parametrize("num_splits", [1, 3, 8, None])
def test_longer_contexts_gqa_8_1(t_q, num_splits):
    q, k, v, dout = make_inputs(1, 8, t_q, 1000, 32, h_kv=1, seed=t_q)
    with torch.no_grad():
        assert_matches_reference(with_splits(flash_decode_torch, num_splits), q, k, v, dout, grads=False)


def test_non_contiguous_inputs():
    q, k, v, dout = make_inputs(2, 4, 2, 300, 16, h_kv=2, contiguous=False, seed=6)
    assert not any(t.is_contiguous() for t in (q, k, v))
    with torch.no_grad():
        assert_matches_reference(with_splits(flash_decode_torch, 3), q, k, v, dout, grads=False)


def test_empty_batch_and_no_keys():
    q, k, v, _ = make_inputs(0, 4, 1, 9, 16, h_kv=2)
    with torch.no_grad():
        assert flash_decode_torch(q, k, v).shape == (0, 4, 1, 16)
        q, k, v, _ = make_inputs(1, 4, 3, 0, 16, h_kv=2)
        out, lse = flash_decode_torch(q, k, v, causal=False, return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()


# -- the split plan ----------------------------------------------------------------------------------------


def test_plan_splits_the_keys_into_chunks_and_clamps():
    plan = decode.split_plan(1, 1000, AttentionSpec(), 3)
    assert (plan.start, plan.n_keys, plan.chunk, plan.num_splits, plan.masked) == (0, 1000, 334, 3, False)
    assert decode.split_plan(1, 5, AttentionSpec(), 64).num_splits == 5  # one key per split at most
    kernel_plan = decode.split_plan(1, 40, AttentionSpec(), 64, block=16)  # whole key blocks of 16
    assert (kernel_plan.chunk, kernel_plan.num_splits) == (16, 3)
    assert decode.split_plan(2, 1000, AttentionSpec(), 4).masked  # the first row sees one key less


def test_plan_covers_only_the_window():
    plan = decode.split_plan(2, 1000, AttentionSpec(window=100), 4)
    assert (plan.start, plan.n_keys, plan.masked) == (899, 101, True)  # rows see [899, 998] and [900, 999]
    no_key_row = decode.split_plan(3, 2, AttentionSpec(), 2)  # the first row sees nothing: masked
    assert (no_key_row.start, no_key_row.n_keys, no_key_row.num_splits, no_key_row.masked) == (0, 2, 2, True)
    assert decode.split_plan(2, 0, AttentionSpec(), 2).num_splits == 0  # nobody sees a key


def test_keys_outside_the_window_are_never_read():
    q, k, v, _ = make_inputs(1, 4, 2, 500, 16, h_kv=2, seed=4)
    poisoned_k, poisoned_v = k.clone(), v.clone()
    poisoned_k[:, :, :399] = float("nan")  # the window of 100 keys of two queries starts at key 399
    poisoned_v[:, :, :399] = float("nan")
    with torch.no_grad():
        clean = with_splits(flash_decode_torch, 4)(q, k, v, window=100)
        got = with_splits(flash_decode_torch, 4)(q, poisoned_k, poisoned_v, window=100)
    assert torch.isfinite(clean).all() and torch.equal(got, clean)


def test_plan_with_kv_lens_cuts_the_whole_buffer_with_per_row_bounds():
    # The lengths stay on the device: the chunks cut all t_k keys, every chunk masked by its row's intervals.
    spec = AttentionSpec(kv_lens=torch.tensor([100, 3]))
    plan = decode.split_plan(2, 100, spec, 4)
    assert (plan.start, plan.n_keys, plan.chunk, plan.num_splits, plan.masked) == (0, 100, 25, 4, True)
    assert plan.lo.tolist() == [[0, 0], [0, 0]] and plan.hi.tolist() == [[98, 99], [1, 2]]


def test_keys_to_split_is_the_union_of_the_intervals_or_the_buffer():
    assert decode.keys_to_split(2, 1000, AttentionSpec()) == 1000
    assert decode.keys_to_split(2, 1000, AttentionSpec(window=100)) == 101  # a window's keys, not the history
    assert decode.keys_to_split(3, 2, AttentionSpec()) == 2
    assert decode.keys_to_split(1, 1000, AttentionSpec(kv_lens=torch.tensor([5]))) == 1000  # not read back


def test_splits_past_a_rows_length_contribute_nothing():
    # Keys at or past a row's length are never used: NaN there changes nothing (the default split count, and 5).
    q, k, v, _ = make_inputs(2, 4, 2, 600, 16, h_kv=2, seed=5)
    kv_lens = torch.tensor([600, 130])
    poisoned_k, poisoned_v = k.clone(), v.clone()
    poisoned_k[1, :, 130:] = float("nan")
    poisoned_v[1, :, 130:] = float("nan")
    for num_splits in (None, 5):
        with torch.no_grad():
            clean = with_splits(flash_decode_torch, num_splits)(q, k, v, kv_lens=kv_lens)
            got = with_splits(flash_decode_torch, num_splits)(q, poisoned_k, poisoned_v, kv_lens=kv_lens)
        assert torch.isfinite(clean).all() and torch.equal(got, clean)


def test_default_num_splits_fills_the_cpu_with_chunks_of_256_keys_at_least():
    threads = torch.get_num_threads()
    cpu = torch.device("cpu")
    assert decode.default_num_splits(10**6, 1, cpu) == 2 * threads
    assert decode.default_num_splits(10**6, 4 * threads, cpu) == 1  # the heads alone fill the threads
    assert decode.default_num_splits(3 * decode.MIN_CHUNK + 5, 1, cpu) == min(3, 2 * threads)
    assert decode.default_num_splits(100, 1, cpu) == 1


def test_merge_is_exact_for_any_split():
    # Merging the halves of a row on their lse gives the whole row's softmax: out and lse of one split.
    q, k, v, _ = make_inputs(1, 2, 1, 64, 16, seed=9)
    with torch.no_grad():
        whole = with_splits(flash_decode_torch, 1)(q, k, v, return_lse=True)
        halves = with_splits(flash_decode_torch, 2)(q, k, v, return_lse=True)
    for got, want in zip(halves, whole, strict=True):
        assert (got - want).abs().max() <= 16 * torch.finfo(torch.float32).eps * want.abs().max()


# -- declarations and refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_features_and_forward_only_are_declared(name):
    backend = BACKENDS[name]
    assert backend.features == {"gqa", "window", "softcap", "sinks", "alibi_slopes", "kv_lens", "return_lse"}
    assert {"cpu", "cuda"} <= set(backend.no_backward_on)
    assert name in backends_with("sinks") and name not in backends_with("seq_lens")
    assert decode.FEATURES == flash_decode_triton.FEATURES


@pytest.mark.parametrize("name", NAMES)
def test_inputs_that_require_grad_are_refused(name):
    q, k, v, _ = make_inputs(1, 2, 1, 8, 16)
    message = f"{name} is forward-only (decoding is inference) but k require grad"
    with pytest.raises(ValueError, match=re.escape(message)):
        BACKENDS[name](q, k.requires_grad_(), v)
    sinks = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=re.escape("but sinks require grad; run it under torch.no_grad()")):
        BACKENDS[name](q, k.detach(), v, sinks=sinks)


def test_grad_requiring_inputs_run_under_no_grad():
    q, k, v, _ = make_inputs(1, 2, 1, 8, 16)
    with torch.no_grad():
        out = flash_decode_torch(q.requires_grad_(), k, v)
    assert not out.requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_too_many_queries_are_refused(name):
    q, k, v, _ = make_inputs(1, 2, 17, 20, 16)
    message = f"{name} decodes at most 16 queries per call, got t_q=17; use flash_torch or flash_triton"
    with pytest.raises(ValueError, match=re.escape(message)):
        BACKENDS[name](q, k, v)


@pytest.mark.parametrize("num_splits", [0, -1, True, 2.0])
def test_bad_num_splits_are_refused(num_splits):
    q, k, v, _ = make_inputs(1, 2, 1, 8, 16)
    with pytest.raises(ValueError, match=re.escape(f"num_splits must be a positive int or None, got {num_splits!r}")):
        flash_decode_torch.attend(q, k, v, AttentionSpec(), num_splits=num_splits)


# -- the Triton kernels ------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_interpreter_suite():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [
        sys.executable, "-m", "pytest", str(INTERPRETER_CASES),
        "-o", "addopts=", "-q", "-p", "no:cacheprovider", "-W", "error",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def test_triton_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v, _ = make_inputs(1, 2, 1, 8, 16)
    with pytest.raises(ValueError, match=r"flash_decode_triton runs on CUDA; on the CPU only .* TRITON_INTERPRET=1"):
        BACKENDS["flash_decode_triton"](q, k, v)
    with pytest.raises(
        ValueError, match=r"flash_decode_triton supports float16, bfloat16, float32; got torch\.float64"
    ):
        BACKENDS["flash_decode_triton"](q.double(), k.double(), v.double())


CUDA = pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA and triton")


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("t_q", [1, 4, 16])
@pytest.mark.parametrize("num_splits", [1, 7, None])
def test_cuda_long_contexts(num_splits, t_q, dtype):
    q, k, v, dout = make_inputs(2, 32, t_q, 5000, 128, h_kv=8, dtype=dtype, device="cuda", seed=t_q)
    options = {"window": 3000, "softcap": 30.0, "sinks": torch.randn(32, device="cuda"), "return_lse": True}
    with torch.no_grad():
        backend = with_splits(BACKENDS["flash_decode_triton"], num_splits)
        assert_matches_reference(backend, q, k, v, dout, grads=False, **options)
