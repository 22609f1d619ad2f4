"""TrainConfig refuses bad settings by name, before anything runs; the world size is checked against the batch."""

from __future__ import annotations

import pytest
from train_cases import tiny_config

from attnlab.train import TrainConfig


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(task="lm"), "unknown task 'lm'; known: mqar, text"),
        (dict(model="huge"), "unknown model preset 'huge'"),
        (dict(steps=0), "steps must be an integer >= 1, got 0"),
        (dict(batch_size=2.5), "batch_size must be an integer >= 1"),
        (dict(lr=0.0), "lr must be > 0"),
        (dict(lr=float("nan")), "lr must be a finite number"),
        (dict(min_lr=1.0), "min_lr 1 must not exceed lr 0.003"),
        (dict(warmup_steps=6), "warmup_steps 6 must be fewer than steps 6"),
        (dict(grad_clip=-1.0), "grad_clip must be >= 0"),
        (dict(eval_seed=0), "eval_seed 0 equals seed"),
        (dict(num_kv_pairs=9), "raise vocab_size to at least 20"),
        (dict(task="text"), "task 'text' needs a text_file"),
        (dict(text_file="a.txt"), "belong to task 'text'"),
        (dict(device="tpu"), "unknown device 'tpu'"),
        (dict(resume=True), "resume needs out_dir"),
        (dict(resume="yes", out_dir="runs"), "resume must be True or False"),
        (dict(out_dir=3), "out_dir must be a path, got int"),
        (dict(context_parallel=2, cp_strategy="tree", attn_impl="naive"), "unknown cp_strategy 'tree'"),
        (dict(context_parallel=2, attn_impl="sdpa"), "'sdpa' does not return"),
        (dict(context_parallel=3, attn_impl="naive"), "seq_len 16 must be a multiple of 2 x context_parallel = 6"),
    ],
)
def test_bad_settings_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**fields)


@pytest.mark.parametrize(
    ("world", "fields", "match"),
    [
        (3, {}, "batch_size 8 does not split over 3 data-parallel rank"),
        (3, dict(context_parallel=2, attn_impl="naive"), "world size 3 is not a multiple of context_parallel 2"),
        (32, dict(context_parallel=2, attn_impl="naive"), "does not split over 16 data-parallel"),
    ],
)
def test_world_size_must_fit_the_batch(world, fields, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**fields).check_world(world)


def test_defaults_are_valid_and_the_batch_splits_over_a_few_ranks():
    config = TrainConfig()
    for world in (1, 2, 4):
        config.check_world(world)
    assert config.task == "mqar" and config.to_dict()["out_dir"] is None
