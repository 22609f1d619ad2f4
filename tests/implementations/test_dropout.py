"""Dropout acts on the attention weights, in training mode only, with inverted scaling 1/(1-p).

The setup makes the attention weights visible in the output: x is the identity (t == d_in == d_out),
W_value and W_out are identities and W_query = W_key = 0, so every head attends uniformly: the weight
of key j for query i is 1/(i+1) for j <= i. Output feature c of query i is then head(c)'s weight of key
c, after dropout: either 0 or 1/((i+1)(1-p)).
"""

import pytest
import torch
from impl_cases import CPU_IMPLS, make_module, scaled_error

from attnlab import AttentionWeights
from attnlab.registry import get_implementation

T = 32  # tokens == d_in == d_out
HEADS = 4
BATCH = 64
DROPOUT_IMPLS = [name for name in CPU_IMPLS if get_implementation(name).capabilities.dropout]


def uniform_attention_module(name, p):
    eye, zeros = torch.eye(T), torch.zeros(T, T)
    weights = AttentionWeights(W_query=zeros, W_key=zeros, W_value=eye, W_out=eye, b_out=torch.zeros(T))
    return make_module(name, weights, HEADS, context_length=T, dropout=p)


def run(module):
    x = torch.eye(T).expand(BATCH, T, T)  # (b, t, d_in), token i is the one-hot vector e_i
    with torch.no_grad():
        return module(x)  # (b, t, d_out)


UNIFORM = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]  # (t, t): 1/(i+1) for j <= i
VISIBLE = torch.tril(torch.ones(T, T, dtype=torch.bool))
# The outputs are attention weights (at most 1, or 1/(1-p) after dropout): 1/(i+1) computed as a softmax of
# equal scores, times identities. Measured: exact on this CPU. The limit, relative to the largest expected
# value, allows a few float32 ulps for another softmax or rescaling order; a wrong mask or dropout scaling
# errs by 1e-2 or more.
WEIGHTS_TOL = 1e-6


@pytest.mark.parametrize("name", DROPOUT_IMPLS)
def test_no_dropout_in_eval_mode(name):
    out = run(uniform_attention_module(name, p=0.5).eval())
    assert scaled_error(out, UNIFORM.expand_as(out)) <= WEIGHTS_TOL


@pytest.mark.parametrize("name", DROPOUT_IMPLS)
def test_no_dropout_at_p_zero_in_training(name):
    out = run(uniform_attention_module(name, p=0.0).train())
    assert scaled_error(out, UNIFORM.expand_as(out)) <= WEIGHTS_TOL


@pytest.mark.parametrize("name", DROPOUT_IMPLS)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_zeroes_a_fraction_p_and_rescales_survivors(name, p):
    torch.manual_seed(0)
    out = run(uniform_attention_module(name, p).train())
    visible = out[:, VISIBLE]  # (b, t*(t+1)/2): the weights a query may have
    expected = (UNIFORM / (1 - p)).expand_as(out)[:, VISIBLE]
    dropped = visible == 0
    # 33,792 Bernoulli(p) draws: the standard error is at most 0.0028, so 0.02 is > 7 standard errors.
    assert abs(dropped.float().mean().item() - p) < 0.02
    assert scaled_error(visible[~dropped], expected[~dropped]) <= WEIGHTS_TOL
    assert torch.all(out[:, ~VISIBLE] == 0)  # the future stays masked
