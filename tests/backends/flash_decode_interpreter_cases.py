"""flash_decode_triton's kernels on the CPU, in Triton's interpreter: run by test_flash_decode.py in a subprocess.

``TRITON_INTERPRET=1`` must be in the environment before anything imports triton, so test_flash_decode.py runs
this file (not collected on its own: no ``test_`` prefix) as ``TRITON_INTERPRET=1 python -m pytest <file>``,
as test_flash_triton.py does for flash_triton. The cases are flash_decode_cases.py's, the ones the PyTorch
spec passes, at interpreter sizes (key blocks of 16, so every case spans several blocks and splits).
bfloat16 is left to CUDA: Triton 3.6's interpreter computes bfloat16 ``tl.dot`` wrongly (see
flash_triton_interpreter_cases.py); float16 and float32 are exact there.
"""

from __future__ import annotations

import os

import pytest
import torch
from flash_decode_cases import CASES, assert_case, with_splits
from flash_reference import assert_matches_reference, make_inputs

from attnlab.backends import BACKENDS

pytest.importorskip("triton")

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 before triton is imported"
)

flash_decode_triton = BACKENDS["flash_decode_triton"]


@pytest.mark.parametrize("name", CASES)
def test_case(name):
    assert_case(flash_decode_triton, name)


def test_float16_and_a_wide_head():
    assert_case(flash_decode_triton, "window", dtype=torch.float16, head_dim=40)


def test_matches_the_torch_spec_for_every_split_count():
    # The same plan cuts the same keys: one split or many, the kernels agree with the PyTorch spec to float32
    # rounding of the reference's magnitude (64 ulps: the two merge in different orders).
    q, k, v, _ = make_inputs(1, 8, 2, 70, 16, h_kv=2, seed=3)
    spec_backend = BACKENDS["flash_decode_torch"]
    for num_splits in (1, 2, 5):
        got = with_splits(flash_decode_triton, num_splits)(q, k, v, window=50)
        want = with_splits(spec_backend, num_splits)(q, k, v, window=50)
        assert (got - want).abs().max() <= 64 * torch.finfo(torch.float32).eps * want.abs().max()


def test_non_contiguous_inputs():
    q, k, v, dout = make_inputs(2, 4, 2, 40, 16, h_kv=2, contiguous=False, seed=6)
    assert not any(t.is_contiguous() for t in (q, k, v))
    assert_matches_reference(with_splits(flash_decode_triton, 3), q, k, v, dout, grads=False)


def test_kv_lens_padding_is_never_read():
    # Splits past a row's length run no step: NaN in the padding changes nothing.
    q, k, v, _ = make_inputs(2, 4, 2, 70, 16, h_kv=2, seed=8)
    kv_lens = torch.tensor([70, 20], dtype=torch.int32)
    poisoned_k, poisoned_v = k.clone(), v.clone()
    poisoned_k[1, :, 20:] = float("nan")
    poisoned_v[1, :, 20:] = float("nan")
    for num_splits in (1, 4):
        clean = with_splits(flash_decode_triton, num_splits)(q, k, v, kv_lens=kv_lens, return_lse=True)
        got = with_splits(flash_decode_triton, num_splits)(q, poisoned_k, poisoned_v, kv_lens=kv_lens, return_lse=True)
        assert all(torch.isfinite(x).all() for x in clean)
        assert all(torch.equal(a, b) for a, b in zip(got, clean, strict=True))
