"""The attention-design presets: matched parameter counts, logits for ids, backends refused by name."""

from __future__ import annotations

import pytest
import torch

from attnlab.train.model import PRESETS, build_model, count_parameters


def test_presets_have_matched_parameter_counts():
    counts = {name: count_parameters(build_model(name, "naive", 64, 32)) for name in PRESETS}
    reference = counts["mha"]
    for name, count in counts.items():
        # the feed-forward width is an integer, so the match is to within one hidden unit per layer (0.2%)
        assert abs(count - reference) <= 0.002 * reference, f"{name}: {count} parameters vs mha's {reference}"


def test_the_model_maps_ids_to_logits_and_takes_positions():
    model = build_model("gqa", "naive", vocab_size=32, seq_len=16, seed=1)
    idx = torch.randint(0, 32, (2, 16))
    logits = model(idx)
    assert logits.shape == (2, 16, 32)
    shifted = model(idx[:, 8:], positions=torch.arange(8, 16))
    assert shifted.shape == (2, 8, 32)
    # the same seed gives the same weights, another seed other weights
    again = build_model("gqa", "naive", vocab_size=32, seq_len=16, seed=1)
    other = build_model("gqa", "naive", vocab_size=32, seq_len=16, seed=2)
    assert torch.equal(again.tok_emb.weight, model.tok_emb.weight)
    assert not torch.equal(other.tok_emb.weight, model.tok_emb.weight)


def test_unknown_preset_and_unable_backend_are_refused():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        build_model("huge", "naive", 32, 16)
    with pytest.raises(ValueError, match="window"):  # sdpa has no sliding window
        build_model("window", "sdpa", 32, 16)
