"""Generation: cache and no cache agree, sampling options, eos handling, clear errors."""

import pytest
import torch

from attnlab.gpt import GPTConfig, GPTModel, generate, iter_generate, sample_next_token

CONFIG = GPTConfig(vocab_size=40, context_length=24, d_model=32, n_layers=2, n_heads=4, dropout=0.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPTModel(CONFIG, attn_impl="sdpa").eval()


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 40, (3, 5), generator=torch.Generator().manual_seed(4))  # (b, t)


def test_cache_and_no_cache_give_the_same_tokens(model, prompt):
    with_cache = model.generate(prompt, max_new_tokens=15, use_cache=True)
    without_cache = model.generate(prompt, max_new_tokens=15, use_cache=False)
    assert with_cache.shape == (3, 20)
    assert torch.equal(with_cache[:, :5], prompt)
    assert torch.equal(with_cache, without_cache)


def test_greedy_step_is_the_argmax_of_the_full_pass(model, prompt):
    tokens = model.generate(prompt, max_new_tokens=4)
    with torch.no_grad():
        logits = model(tokens[:, :-1])  # (b, t + 3, vocab): row i predicts token i + 1
    assert torch.equal(tokens[:, 5:], logits[:, 4:].argmax(dim=-1))


def test_sampling_is_reproducible_with_a_seeded_generator(model, prompt):
    def sample(seed):
        generator = torch.Generator().manual_seed(seed)
        return model.generate(prompt, max_new_tokens=10, temperature=1.5, generator=generator)

    assert torch.equal(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))  # 30 draws at temperature 1.5: equal by chance ~never


def test_top_k_1_sampling_is_greedy(model, prompt):
    generator = torch.Generator().manual_seed(0)
    sampled = model.generate(prompt, max_new_tokens=8, temperature=2.0, top_k=1, generator=generator)
    assert torch.equal(sampled, model.generate(prompt, max_new_tokens=8))


def test_top_k_restricts_samples_to_the_k_best():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0, -2.0]]).repeat(200, 1)  # (200, 5)
    tokens = sample_next_token(logits, temperature=10.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {1, 3}  # both best tokens drawn at this flat temperature, nothing else


def test_rows_stop_at_eos_and_generation_ends_when_all_have(model, prompt):
    free = model.generate(prompt, max_new_tokens=6)
    eos_id = int(free[0, 6])  # row 0's second new token
    stopped = model.generate(prompt, max_new_tokens=6, eos_id=eos_id)
    row0 = stopped[0, 5:].tolist()
    first = row0.index(eos_id)
    assert first <= 1  # row 0 reaches it by its second token at the latest
    assert all(token == eos_id for token in row0[first:])
    for row in range(3):  # before a row's first eos, the eos option changes nothing
        new = stopped[row, 5:].tolist()
        upto = new.index(eos_id) if eos_id in new else len(new)
        assert new[:upto] == free[row, 5 : 5 + upto].tolist()
    # one model, one eos: every row that reached it keeps it; the run ends early only if all rows did
    assert stopped.shape[1] == 11 or bool((stopped[:, -1] == eos_id).all())


def test_iter_generate_streams_one_token_per_row_per_step(model, prompt):
    steps = list(iter_generate(model, prompt, 5))
    assert len(steps) == 5 and all(step.shape == (3,) for step in steps)
    assert generate(model, prompt, 0).shape == (3, 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 20}, "prompt length 5 \\+ max_new_tokens 20 = 25 exceeds context_length 24"),
        ({"max_new_tokens": -1}, "max_new_tokens must be a non-negative integer"),
        ({"max_new_tokens": 3, "temperature": -1.0}, "temperature must be >= 0"),
        ({"max_new_tokens": 3, "top_k": 0}, "top_k must be a positive integer"),
        ({"max_new_tokens": 3, "eos_id": -1}, r"eos_id must be a token id \(an integer >= 0\)"),
        ({"max_new_tokens": 3, "eos_id": 10**6}, r"eos_id must be a token id in \[0, "),
    ],
)
def test_bad_arguments_are_clear_errors_at_the_call(model, prompt, kwargs, message):
    with pytest.raises(ValueError, match=message):
        iter_generate(model, prompt, **kwargs)  # raises before the first step is requested


def test_cache_with_an_implementation_without_one_names_the_alternatives(prompt):
    model = GPTModel(CONFIG, attn_impl="wrapper").eval()
    with pytest.raises(ValueError, match=r"'wrapper' has no KV-cache path; .*use_cache=False.*sdpa"):
        model.generate(prompt, max_new_tokens=2)
    assert model.generate(prompt, max_new_tokens=2, use_cache=False).shape == (3, 7)


def test_sample_next_token_checks_its_own_arguments():
    logits = torch.randn(2, 7)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        sample_next_token(logits, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        sample_next_token(logits, temperature=1.0, top_k=0)
    # A tiny temperature is as good as greedy, not a NaN from float32 overflow.
    assert torch.equal(sample_next_token(logits, temperature=1e-30), logits.argmax(dim=-1))


def test_sampling_at_the_smallest_temperature_is_greedy_not_nan():
    logits = torch.tensor([[1.0, 3.0, 2.0], [-5.0, -4.0, 7.5]])  # (2, 3)
    tokens = sample_next_token(logits, temperature=5e-324, generator=torch.Generator().manual_seed(0))
    assert tokens.tolist() == [1, 2]


def test_sampling_from_nan_logits_is_a_value_error():
    logits = torch.tensor([[float("nan"), 1.0]])
    with pytest.raises(ValueError, match="cannot sample: the logits hold NaN or infinite values"):
        sample_next_token(logits, temperature=1.0)
