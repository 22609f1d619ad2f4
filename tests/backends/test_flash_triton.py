"""flash_triton: the interpreter suite (in a subprocess), the CUDA suite, and input validation.

On a machine without a GPU the kernels are checked by flash_triton_interpreter_cases.py, run here in a
child process with ``TRITON_INTERPRET=1`` set before triton is imported (see that file for why).
The CUDA tests use the issue's full sizes and all three dtypes; they are skipped without CUDA. The CUDA
feature tests mirror the interpreter's at real sizes. Error bounds: FlashAttention's rule, see
flash_reference.py (and flash_triton_checks.py for the returned lse and for skipped tiles).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flash_reference import (
    assert_matches_reference,
    assert_rows_without_keys_are_zero,
    make_inputs,
    run_with_grads,
)
from flash_triton_checks import alibi_slopes, assert_lse_matches_reference, assert_unseen_tiles_are_skipped, sinks_for

from attnlab.backends import BACKENDS, AttentionSpec, backends_with
from attnlab.backends.flash_triton import FEATURES, unsupported_device_reason
from attnlab.kernels.config import FlashTritonConfig, KernelConfig, default_config
from attnlab.kernels.features import KernelFeatures, packed_sequence_bounds

flash_triton_attention = BACKENDS["flash_triton"]

HAS_TRITON = importlib.util.find_spec("triton") is not None


def with_config(config):
    """flash_triton through the registry with explicit kernel block sizes."""
    return lambda q, k, v, **options: flash_triton_attention.attend(q, k, v, AttentionSpec(**options), config=config)


CUDA = pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA and triton")
CASES = Path(__file__).with_name("flash_triton_interpreter_cases.py")


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_interpreter_suite():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(CASES),
        "-o",
        "addopts=",
        "-q",
        "-p",
        "no:cacheprovider",
        "-W",
        "error",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def test_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in unsupported_device_reason("cpu")
    assert unsupported_device_reason("cuda") is None
    q, k, v, _ = make_inputs(1, 1, 4, 4, 16)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        flash_triton_attention(q, k, v)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert unsupported_device_reason("cpu") is None


def test_bad_inputs_are_refused():
    q, k, v, _ = make_inputs(1, 1, 4, 4, 16)
    with pytest.raises(ValueError, match="does not support dropout"):
        flash_triton_attention(q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match=r"supports float16, bfloat16, float32; got torch\.float64"):
        flash_triton_attention(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="share one dtype"):
        flash_triton_attention(q, k.half(), v)
    big = torch.zeros(1, 1, 2, 512)
    with pytest.raises(ValueError, match="head_dim 512 exceeds flash_triton's maximum of 256"):
        flash_triton_attention(big, big, big)


def test_kernel_configs_are_validated():
    with pytest.raises(ValueError, match="block_m must be a power of two in \\[16, 256\\], got 48"):
        KernelConfig(48, 64)
    with pytest.raises(ValueError, match="num_stages must be an integer in \\[1, 8\\], got 0"):
        KernelConfig(64, 64, num_warps=4, num_stages=0)
    assert default_config(64, "cuda") != default_config(64, "cpu")


def test_every_feature_but_dropout_is_declared():
    assert FEATURES == {"gqa", "window", "softcap", "sinks", "alibi_slopes", "seq_lens", "kv_lens", "return_lse"}
    assert "flash_triton" in backends_with("seq_lens") and "flash_triton" not in backends_with("dropout")


def test_packed_sequence_bounds_give_each_token_its_sequence():
    seq_start, seq_end = packed_sequence_bounds((2, 3, 1))
    assert seq_start.dtype == seq_end.dtype == torch.int32
    assert seq_start.tolist() == [0, 0, 2, 2, 2, 5] and seq_end.tolist() == [2, 2, 5, 5, 5, 6]


def test_kernel_features_are_built_from_a_spec_and_validated():
    sinks = torch.zeros(4, requires_grad=True)
    features = KernelFeatures.from_spec(AttentionSpec(window=3, softcap=30, sinks=sinks, seq_lens=[2, 3]), "cpu")
    assert features.packed and features.window == 3 and features.softcap == 30.0
    assert not features.sinks.requires_grad  # the backward computes the sinks' gradient itself
    assert features.seq_end.tolist() == [2, 2, 5, 5, 5]
    with pytest.raises(ValueError, match="window=4 needs causal=True"):
        KernelFeatures(causal=False, window=4)
    with pytest.raises(ValueError, match="seq_start and seq_end come together"):
        KernelFeatures(seq_start=torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="seq_start must be a 1-D int32 tensor"):
        KernelFeatures(seq_start=torch.zeros(3), seq_end=torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"softcap must be > 0, got -1\.0"):
        KernelFeatures(softcap=-1.0)
    with_lengths = KernelFeatures.from_spec(AttentionSpec(kv_lens=torch.tensor([5, 2])), "cpu")
    assert with_lengths.kv_lens.dtype == torch.int32 and with_lengths.kv_lens.tolist() == [5, 2]
    with pytest.raises(ValueError, match="kv_lens must be a 1-D int32 tensor"):
        KernelFeatures(kv_lens=torch.tensor([5, 2]))


@CUDA
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("t_q", [1, 7, 64])
def test_cuda_kv_lens(t_q, dtype):
    # A static cache of 1000 slots with ragged valid prefixes (one shorter than the queries), GQA, a window,
    # softcap, sinks and ALiBi, with gradients.
    q, k, v, dout = make_inputs(4, 4, t_q, 1000, 64, h_kv=2, dtype=dtype, device="cuda", seed=t_q)
    kv_lens = torch.tensor([1000, 1, 5, 613], device="cuda")
    options = {"window": 129, "softcap": 20.0, "sinks": sinks_for(4).cuda(), "alibi_slopes": alibi_slopes(4).cuda()}
    assert_matches_reference(flash_triton_attention, q, k, v, dout, kv_lens=kv_lens, return_lse=True, **options)


@CUDA
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t", [1, 2, 17, 97, 113, 257, 1000])
def test_cuda_sequence_lengths(t, causal):
    q, k, v, dout = make_inputs(2, 3, t, t, 64, device="cuda", seed=t)
    assert_matches_reference(flash_triton_attention, q, k, v, dout, causal=causal)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("t_q", "t_k"), [(1, 239), (3, 799), (127, 513), (1024, 1023), (239, 1), (799, 3), (513, 127), (1023, 1024)]
)
def test_cuda_unequal_lengths(t_q, t_k, dtype):
    q, k, v, dout = make_inputs(1, 2, t_q, t_k, 64, dtype=dtype, device="cuda", seed=t_q + t_k)
    assert_matches_reference(flash_triton_attention, q, k, v, dout, causal=True)


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 80, 128])
def test_cuda_head_dims(head_dim, dtype):
    q, k, v, dout = make_inputs(2, 2, 300, 300, head_dim, dtype=dtype, device="cuda", seed=head_dim)
    assert_matches_reference(flash_triton_attention, q, k, v, dout, causal=True)


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_scaled_non_contiguous_and_empty_rows(dtype):
    q, k, v, dout = make_inputs(2, 4, 300, 200, 64, dtype=dtype, device="cuda", scale=5.0, contiguous=False)
    assert_matches_reference(flash_triton_attention, q, k, v, dout, causal=True)
    assert_rows_without_keys_are_zero(flash_triton_attention, q, k, v, dout)


@CUDA
def test_cuda_forward_is_bitwise_repeatable_and_empty_batch_works():
    q, k, v, dout = make_inputs(2, 4, 700, 700, 64, dtype=torch.bfloat16, device="cuda")
    first = flash_triton_attention(q, k, v)
    assert all(torch.equal(first, flash_triton_attention(q, k, v)) for _ in range(3))
    q, k, v, dout = make_inputs(0, 4, 7, 7, 64, device="cuda")
    out, dq, *_ = run_with_grads(flash_triton_attention, q, k, v, dout, causal=True)
    assert out.shape == (0, 4, 7, 64) and dq.shape == q.shape


@CUDA
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_other_block_configs(head_dim):
    # The benchmark's autotuning picks among configurations like these; each must be correct.
    for fwd, dq, dkdv in [
        ((64, 64, 4, 2), (128, 32, 8, 2), (32, 128, 4, 3)),
        ((128, 128, 8, 2), (64, 64, 4, 2), (64, 64, 4, 2)),
    ]:
        config = FlashTritonConfig(KernelConfig(*fwd), KernelConfig(*dq), KernelConfig(*dkdv))
        q, k, v, dout = make_inputs(1, 2, 333, 333, head_dim, dtype=torch.bfloat16, device="cuda")
        assert_matches_reference(with_config(config), q, k, v, dout, causal=True)


# -- the AttentionSpec features at real sizes: the interpreter cases of flash_triton_interpreter_cases.py --

CUDA_FEATURES = {  # name: (heads, key/value heads, options)
    "gqa_6_2": (6, 2, {}),
    "mqa_8_1": (8, 1, {}),
    "window_1": (2, 2, {"window": 1}),
    "window_3": (2, 2, {"window": 3}),
    "window_200": (2, 2, {"window": 200}),
    "window_longer_than_t": (2, 2, {"window": 5000}),
    "sinks": (2, 2, {"sinks": "sinks"}),
    "alibi": (2, 2, {"alibi_slopes": "alibi"}),
    "packed": (2, 2, {"seq_lens": [1, 17, 400, 300, 7, 275]}),
}


def cuda_options(options: dict, h: int, dtype: torch.dtype) -> dict:
    """Options with "sinks" / "alibi" placeholders made tensors on the GPU (sinks in the inputs' dtype, as a
    model holds them: their gradient sums rowsum(dO * O) over the rounded output, see the float16 case)."""
    made = dict(options)
    if made.get("sinks") == "sinks":
        made["sinks"] = sinks_for(h, "cuda").to(dtype)
    if made.get("alibi_slopes") == "alibi":
        made["alibi_slopes"] = alibi_slopes(h, "cuda")
    return made


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("name", CUDA_FEATURES)
def test_cuda_each_feature_alone(name, dtype):
    h, h_kv, options = CUDA_FEATURES[name]
    q, k, v, dout = make_inputs(2, h, 1000, 1000, 64, h_kv=h_kv, dtype=dtype, device="cuda", seed=len(name))
    assert_matches_reference(flash_triton_attention, q, k, v, dout, causal=True, **cuda_options(options, h, dtype))


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_softcap_30_with_inputs_scaled_by_five(dtype):
    q, k, v, dout = make_inputs(2, 4, 700, 700, 128, dtype=dtype, device="cuda", scale=5.0, seed=8)
    for causal in (True, False):
        assert_matches_reference(flash_triton_attention, q, k, v, dout, causal=causal, softcap=30.0)


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("t_q", "t_k"), [(1000, 1000), (777, 1100), (1100, 777)])
def test_cuda_gqa_window_softcap_sinks_alibi_combined(t_q, t_k, dtype):
    q, k, v, dout = make_inputs(2, 8, t_q, t_k, 64, h_kv=2, dtype=dtype, device="cuda", seed=t_q)
    options = cuda_options({"window": 300, "softcap": 20.0, "sinks": "sinks", "alibi_slopes": "alibi"}, 8, dtype)
    assert_matches_reference(flash_triton_attention, q, k, v, dout, causal=True, **options)


@CUDA
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_packed_sequences_with_gqa_and_sinks(dtype, causal):
    q, k, v, dout = make_inputs(1, 8, 1000, 1000, 128, h_kv=4, dtype=dtype, device="cuda", seed=10)
    options = cuda_options({"seq_lens": [1, 17, 40, 600, 342], "sinks": "sinks"}, 8, dtype)
    assert_matches_reference(flash_triton_attention, q, k, v, dout, causal=causal, **options)


@CUDA
@pytest.mark.parametrize("window", [1, 5, 130])
@pytest.mark.parametrize(("t_q", "t_k"), [(100, 1000), (1000, 100), (1, 513)])
def test_cuda_window_with_unequal_lengths(t_q, t_k, window):
    q, k, v, dout = make_inputs(2, 2, t_q, t_k, 64, dtype=torch.bfloat16, device="cuda", seed=t_q + window)
    options = cuda_options({"window": window, "sinks": "sinks"}, 2, torch.bfloat16)
    assert_matches_reference(flash_triton_attention, q, k, v, dout, causal=True, **options)


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim", [40, 59, 80, 96, 256])
def test_cuda_features_at_other_head_dims(head_dim, dtype):
    q, k, v, dout = make_inputs(1, 4, 500, 500, head_dim, h_kv=2, dtype=dtype, device="cuda", seed=head_dim)
    options = cuda_options({"window": 100, "softcap": 20.0, "sinks": "sinks", "alibi_slopes": "alibi"}, 4, dtype)
    assert_matches_reference(flash_triton_attention, q, k, v, dout, causal=True, **options)


@CUDA
def test_cuda_rows_without_keys_with_window_and_sinks():
    q, k, v, dout = make_inputs(2, 4, 700, 300, 64, dtype=torch.bfloat16, device="cuda", seed=12)
    options = cuda_options({"window": 50, "sinks": "sinks"}, 4, torch.bfloat16)
    assert_matches_reference(flash_triton_attention, q, k, v, dout, causal=True, **options)
    out, dq, dk, dv, dsinks = run_with_grads(flash_triton_attention, q, k, v, dout, causal=True, **options)
    assert torch.equal(out[:, :, :400], torch.zeros_like(out[:, :, :400]))
    assert torch.equal(dq[:, :, :400], torch.zeros_like(dq[:, :, :400]))
    assert all(torch.isfinite(g).all() for g in (dk, dv, dsinks))


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_lse_and_its_gradient(dtype):
    q, k, v, dout = make_inputs(2, 4, 700, 300, 64, h_kv=2, dtype=dtype, device="cuda", seed=13)
    options = cuda_options({"window": 100, "sinks": "sinks"}, 4, dtype)
    assert_lse_matches_reference(flash_triton_attention, q, k, v, dout, causal=True, **options)
    q, k, v, dout = make_inputs(2, 2, 500, 500, 128, dtype=dtype, device="cuda", seed=14)
    options = cuda_options({"softcap": 4.0, "alibi_slopes": "alibi", "seq_lens": [100, 400]}, 2, dtype)
    assert_lse_matches_reference(flash_triton_attention, q, k, v, dout, causal=False, **options)


@CUDA
def test_cuda_key_tiles_outside_windows_and_sequences_are_skipped():
    # Whole tiles of every default configuration (blocks of up to 128 rows) are unseen.
    q, k, v, dout = make_inputs(1, 2, 256, 2048, 64, dtype=torch.bfloat16, device="cuda", seed=15)
    assert_unseen_tiles_are_skipped(
        flash_triton_attention, q, k, v, dout, keys=slice(0, 1024), rows=slice(0, 256), window=64
    )
    q, k, v, dout = make_inputs(1, 2, 2048, 2048, 64, dtype=torch.bfloat16, device="cuda", seed=16)
    for seen, unseen in ((slice(0, 1024), slice(1024, 2048)), (slice(1024, 2048), slice(0, 1024))):
        for causal in (True, False):
            assert_unseen_tiles_are_skipped(
                flash_triton_attention, q, k, v, dout, keys=unseen, rows=seen, causal=causal, seq_lens=[1024, 1024]
            )


@CUDA
def test_cuda_offsets_past_two_to_the_31_elements():
    # (b, t, h, d) = (1, 2**15 + 1, 1, 16) with a row stride of 2**16: the last row starts at 2**31 elements.
    from attnlab.kernels.launch import needs_int64_rows

    t, d, stride = 2**15 + 1, 16, 2**16
    storage = torch.empty(stride * (t - 1) + 3 * d, dtype=torch.bfloat16, device="cuda")  # 4 GiB
    q, k, v, dout = make_inputs(1, 1, t, t, d, dtype=torch.bfloat16, device="cuda", seed=17)
    views = [storage.as_strided((1, 1, t, d), (stride * t, 0, stride, 1), storage_offset=i * d) for i in range(3)]
    for view, source in zip(views, (q, k, v), strict=True):
        view.copy_(source)
    assert needs_int64_rows(views[0])
    expected = run_with_grads(flash_triton_attention, q, k, v, dout, causal=True, window=500)
    got = run_with_grads(flash_triton_attention, *views, dout, causal=True, window=500)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected, strict=True):
        assert torch.equal(a, b), f"{name} differs when the rows lie 2**31 elements apart"
