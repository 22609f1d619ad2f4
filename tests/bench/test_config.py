"""BenchConfig, presets and sweeps: validated up front, with messages that name the bad value."""

import pytest

from attnlab.bench import PRESETS, BenchConfig, Sweep, default_preset
from attnlab.implementations import IMPLEMENTATIONS


def test_presets_have_the_issue_sizes():
    notebook = BenchConfig.from_preset("notebook")
    assert (notebook.batch, notebook.seq_len, notebook.d_model, notebook.num_heads) == (8, 1024, 768, 12)
    quick = BenchConfig.from_preset("quick")
    assert quick.preset == "quick" and quick.seq_len < notebook.seq_len
    assert PRESETS["long"].seq_len > notebook.seq_len
    assert default_preset("cpu") == "quick" and default_preset("cuda") == "notebook"


def test_preset_values_can_be_overridden():
    config = BenchConfig.from_preset("notebook", seq_len=128, impls=("sdpa",))
    assert (config.batch, config.seq_len, config.impls) == (8, 128, ("sdpa",))


def test_default_is_every_registered_implementation():
    assert BenchConfig().impl_names == tuple(IMPLEMENTATIONS)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"impls": ("sdpa", "nope")}, "unknown attention implementation 'nope'; valid names: wrapper"),
        ({"impls": ()}, "no implementation selected"),
        ({"d_model": 30, "num_heads": 4}, "d_model 30 is not divisible by num_heads 4"),
        ({"seq_len": 0}, "seq_len must be a positive integer, got 0"),
        ({"dtype": "float64"}, "unknown dtype 'float64'"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"modes": ("sideways",)}, "modes"),
        ({"min_run_time": 0}, "min_run_time must be a finite number of seconds in (0, 3600], got 0"),
        ({"sweep": Sweep("num_heads", (4, 5))}, "d_model 256 is not divisible by num_heads 5"),
    ],
)
def test_bad_config_raises_naming_the_value(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        BenchConfig(**overrides)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'huge'; choose from quick, notebook, long"):
        BenchConfig.from_preset("huge")


@pytest.mark.parametrize(
    ("text", "key", "values"),
    [
        ("seq=256,512,1024", "seq_len", (256, 512, 1024)),
        ("heads=2,4", "num_heads", (2, 4)),
        ("d-model=64", "d_model", (64,)),
        ("batch=1,2", "batch", (1, 2)),
    ],
)
def test_sweep_parse(text, key, values):
    assert Sweep.parse(text) == Sweep(key, values)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seq", "KEY=v1,v2"),
        ("dropout=0.1", "cannot sweep 'dropout'"),
        ("seq=a,b", "comma-separated integers"),
        ("seq=", "at least one value"),
        ("seq=8,8", "repeat"),
        ("seq=0,8", "positive integer"),
    ],
)
def test_bad_sweep(text, message):
    with pytest.raises(ValueError, match=message):
        Sweep.parse(text)


def test_points_replace_the_swept_size():
    config = BenchConfig(sweep=Sweep("seq_len", (64, 128)))
    points = config.points()
    assert [p.seq_len for p in points] == [64, 128]
    assert all(p.sweep is None and p.d_model == config.d_model for p in points)
    assert config.to_dict()["sweep"] == {"key": "seq_len", "values": [64, 128]}


@pytest.mark.parametrize("seconds", [float("inf"), float("nan"), float("-inf"), -1.0, 1e9])
def test_min_run_time_must_be_finite_seconds_or_a_run_never_ends(seconds):
    with pytest.raises(ValueError, match=r"min_run_time must be a finite number of seconds in \(0, 3600\]"):
        BenchConfig(min_run_time=seconds)


def test_seed_must_fit_a_torch_generator():
    with pytest.raises(
        ValueError, match=r"seed must be an integer from -2\*\*63 to 2\*\*64 - 1, got 18446744073709551616"
    ):
        BenchConfig(seed=2**64)


def test_a_swept_size_cannot_also_be_given():
    with pytest.raises(ValueError, match=r"seq_len 32 is given and also swept over \[8, 16\]; give one"):
        BenchConfig.from_preset("quick", seq_len=32, sweep=Sweep("seq_len", (8, 16)))
    assert BenchConfig.from_preset("quick", batch=1, sweep=Sweep("seq_len", (8, 16))).batch == 1
