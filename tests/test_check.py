"""check_implementations: passes correct implementations and catches a wrong one."""

import pytest
import torch

from attnlab import IMPLEMENTATIONS
from attnlab.check import FORWARD_TOL, check_implementations
from attnlab.implementations.sdpa import SDPAAttention


def test_correct_implementations_pass_with_small_errors():
    results = check_implementations(["ch03", "sdpa", "torch_mha"], seq_len=5)
    assert [r.name for r in results] == ["ch03", "sdpa", "torch_mha"]
    for r in results:
        assert r.status == "pass"
        assert 0 <= r.forward_err <= FORWARD_TOL
        assert r.input_grad_err is not None and r.weight_grad_err is not None


def test_flex_passes_forward_and_says_why_gradients_are_missing():
    (result,) = check_implementations(["flex"], seq_len=5)
    assert result.status == "pass"
    assert result.input_grad_err is None
    assert "no backward pass on cpu" in result.note


class _NotCausal(SDPAAttention):
    """A deliberately wrong implementation: it lets queries see the future."""

    def attend(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # no causal mask
        return self.out_proj(self.merge_heads(out))


def test_a_wrong_implementation_fails(monkeypatch):
    monkeypatch.setitem(IMPLEMENTATIONS, "not_causal", _NotCausal)
    (result,) = check_implementations(["not_causal"], seq_len=6)
    assert result.status == "fail"
    assert result.forward_err > 1e-3


def test_unknown_name_fails_before_any_work():
    with pytest.raises(ValueError, match="unknown attention implementation 'bogus'"):
        check_implementations(["sdpa", "bogus"])
