"""Every registered backend follows attnlab's one causal convention (see attnlab.backends.common).

Query i of t_q sees key j of t_k iff j <= i + (t_k - t_q) (bottom-right alignment); a query that sees no
key (t_q > t_k) outputs zeros, with finite gradients. The reference below is written from that
sentence alone, one query row at a time in float64, independent of every backend's masking code.

Exceptions, tested as such: ``flex`` refuses t_q > t_k with a ValueError and has no CPU backward;
``flash_triton`` and ``flash_decode_triton`` run on the CPU only in Triton's interpreter, so their CPU checks
live in their interpreter suites and they are checked here on CUDA only. Backends that declare no backward on
a device (``Backend.no_backward_on``: the forward-only decoding backends) are checked forward only there.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.backends import BACKENDS

PAIRS = [(6, 6), (4, 9), (9, 4), (1, 5), (5, 1)]
#: Backends whose CPU runs need Triton's interpreter (checked on CUDA here).
TRITON = ("flash_triton", "flash_decode_triton")
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
#: Limit relative to the reference's magnitude: float32 against float64 on rows of at most 9 keys, measured
#: <= 6.5 float32 ulps of the magnitude on an Intel CPU (sdpa's dq); 64 ulps (7.6e-6) equal the former
#: absolute 1e-5 at these inputs' typical magnitude (~1.3), leave room for AMD's matmul kernels, and stay 1e4
#: below a shifted mask's error (~1e-1 of the magnitude).
REL_TOL = 64 * torch.finfo(torch.float32).eps


def assert_close(got: torch.Tensor, want: torch.Tensor, magnitude: float) -> None:
    """|got - want| <= REL_TOL x the reference's magnitude (the call's, where this quantity is exactly zero)."""
    scale = want.abs().max().item() or magnitude
    err = (got.detach().double().cpu() - want.detach()).abs().max().item()
    assert err <= REL_TOL * scale, f"error {err:.3g} > {REL_TOL:.2g} x magnitude {scale:.3g}"


def expected_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """The convention, row by row: softmax over the keys query i may see, zeros if it sees none."""
    t_q, t_k = q.shape[-2], k.shape[-2]
    rows = []
    for i in range(t_q):
        visible = [j for j in range(t_k) if not causal or j <= i + t_k - t_q]
        if not visible:
            rows.append(torch.zeros_like(q[..., i, :]))
            continue
        scores = q[..., i : i + 1, :] @ k[..., visible, :].transpose(-2, -1) / q.shape[-1] ** 0.5  # (b, h, 1, n)
        rows.append((torch.softmax(scores, dim=-1) @ v[..., visible, :])[..., 0, :])  # (b, h, d)
    return torch.stack(rows, dim=-2)  # (b, h, t_q, d)


def inputs(t_q: int, t_k: int, device: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(t_q * 10 + t_k)
    shapes = [(2, 2, t_q, 16), (2, 2, t_k, 16), (2, 2, t_k, 16), (2, 2, t_q, 16)]  # q, k, v, dout
    return [torch.randn(*s, generator=gen).to(device) for s in shapes]


def check(name: str, t_q: int, t_k: int, causal: bool, device: str, backward: bool = True) -> None:
    q, k, v, dout = inputs(t_q, t_k, device)
    ref_leaves = [t.detach().double().cpu().requires_grad_() for t in (q, k, v)]
    expected = expected_attention(*ref_leaves, causal)
    leaves = [t.clone().requires_grad_(backward) for t in (q, k, v)]
    with torch.set_grad_enabled(backward):
        out = BACKENDS[name](*leaves, causal=causal)
    assert out.shape == expected.shape
    assert_close(out, expected, expected.abs().max().item())
    if causal and t_q > t_k:  # rows that see no key: exactly zero
        assert torch.equal(out[..., : t_q - t_k, :].detach(), torch.zeros_like(out[..., : t_q - t_k, :]))
    if backward:
        grads = torch.autograd.grad(out, leaves, dout)
        expected_grads = torch.autograd.grad(expected, ref_leaves, dout.double().cpu())
        # A single visible key makes dq exactly zero in float64; its float32 rounding is measured against
        # the size of the call's other quantities.
        magnitude = max(t.abs().max().item() for t in (expected, *expected_grads))
        for got, want in zip(grads, expected_grads, strict=True):
            assert torch.isfinite(got).all()
            assert_close(got, want, magnitude)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("t_q", "t_k"), PAIRS)
@pytest.mark.parametrize("name", [n for n in BACKENDS if n not in ("flex", *TRITON)])
def test_backend_follows_convention(name, t_q, t_k, causal, device):
    check(name, t_q, t_k, causal, device, backward=device not in BACKENDS[name].no_backward_on)


@pytest.mark.parametrize("device", DEVICES)
def test_flex_bottom_right_and_refusal(device):
    # One shape only: every new shape costs FlexAttention a compilation of several seconds on the CPU.
    check("flex", 4, 9, True, device, backward=device == "cuda")
    q, k, v, _ = inputs(9, 4, device)
    with pytest.raises(ValueError, match="needs t_q <= t_k for causal attention, got t_q=9 > t_k=4"):
        BACKENDS["flex"](q, k, v, causal=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU: see test_flash_triton.py)")
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("t_q", "t_k"), PAIRS)
@pytest.mark.parametrize("name", TRITON)
def test_triton_backends_follow_convention_on_cuda(name, t_q, t_k, causal):
    check(name, t_q, t_k, causal, "cuda", backward="cuda" not in BACKENDS[name].no_backward_on)
