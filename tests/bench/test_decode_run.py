"""The decode benchmark end to end on a tiny model (structure and arithmetic only, no timing assertions)."""

import pytest
import torch

from attnlab.bench.bandwidth import default_bandwidth_bytes, measure_bandwidth
from attnlab.bench.decode_bytes import mean_step_bytes, step_weight_bytes
from attnlab.bench.decode_config import DecodeBenchConfig
from attnlab.bench.decode_run import run_decode_bench
from attnlab.bench.hf_generate import GenerateReference
from attnlab.gpt import GPTConfig, GPTModel
from attnlab.gpt.hf_random import save_random_gpt2

TINY = GPTConfig(vocab_size=96, context_length=64, d_model=32, n_layers=2, n_heads=4, dropout=0.0)


@pytest.fixture(scope="module")
def result():
    config = DecodeBenchConfig(
        model=TINY,
        impls=("sdpa",),
        quants=("none", "int8"),
        contexts=(4, 16),
        new_tokens=2,
        device="cpu",
        min_run_time=0.01,
        bandwidth_bytes=2**20,
    )
    progress = []
    return run_decode_bench(config, on_progress=lambda done, total, text: progress.append((done, total))), progress


def test_one_row_per_context_and_target_plus_the_reference(result):
    result, progress = result
    keys = [(row.context, row.impl, row.quant) for row in result.rows]
    targets = [
        ("transformers generate", "none"),
        ("sdpa", "none"),
        ("sdpa", "int8"),
    ]
    assert keys == [(context, impl, quant) for context in (4, 16) for impl, quant in targets]
    assert progress[-1] == (6, 6) and [done for done, _ in progress] == sorted(done for done, _ in progress)


def test_rows_are_consistent(result):
    result, _ = result
    for row in result.rows:
        if row.impl == "transformers generate" and row.status != "ok":
            # On a tiny model, 2 decode steps take a few ms: a loaded machine can swamp that difference, which
            # the reference then refuses by name (tested deterministically below, with a fake timer).
            assert "the machine's load swamped the decode steps" in row.note
            continue
        assert row.status == "ok", row.note
        assert row.tokens_per_s > 0 and row.ms_per_step > 0
        assert row.tokens_per_s == pytest.approx(1e3 / row.ms_per_step)  # batch 1
        assert row.step_bytes == pytest.approx(row.weight_bytes + row.kv_bytes)
        achieved = row.step_bytes / (row.ms_per_step / 1e3)
        assert row.achieved_gb_per_s == pytest.approx(achieved / 1e9)
        assert row.bandwidth_fraction == pytest.approx(achieved / (result.header.bandwidth_gb_per_s * 1e9))
    by_key = {(row.context, row.impl, row.quant): row for row in result.rows}
    # same checkpoint: float32 logits agree with transformers' to rounding; int8 moves them by ~1 %
    assert by_key[(4, "sdpa", "none")].logits_error < 1e-5
    assert 1e-5 < by_key[(4, "sdpa", "int8")].logits_error < 5e-2
    # int8 weights: fewer bytes per step than float32 ones, the same KV bytes
    assert by_key[(4, "sdpa", "int8")].weight_bytes < by_key[(4, "sdpa", "none")].weight_bytes / 2
    assert by_key[(4, "sdpa", "int8")].kv_bytes == by_key[(4, "sdpa", "none")].kv_bytes
    # attnlab's model and transformers' read the same float32 bytes per step
    if by_key[(16, "transformers generate", "none")].status == "ok":
        assert by_key[(16, "sdpa", "none")].step_bytes == by_key[(16, "transformers generate", "none")].step_bytes


def test_header_names_machine_versions_and_bandwidth(result):
    header = result[0].header
    assert header.device == "cpu" and header.dtype == "float32" and header.batch == 1
    assert set(header.versions) == {"torch", "transformers", "torchao"}
    assert header.bandwidth_gb_per_s == max(header.bandwidth_samples_gb_per_s) > 0
    assert header.bandwidth_probe_bytes == 2**20


def test_reference_kv_bytes_and_weights_match_its_tensors(tmp_path):
    save_random_gpt2(TINY, tmp_path, seed=0)
    reference = GenerateReference(tmp_path, torch.device("cpu"), torch.float32)
    prompt = torch.randint(0, TINY.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))  # (b, t)
    with torch.no_grad():
        cache = reference.module(prompt, use_cache=True).past_key_values
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert reference.kv_bytes(batch=2, length=9) == held
    # the same checkpoint in attnlab: the same weights read per step, the same KV bytes
    ours = GPTModel.from_hf(tmp_path, attn_impl="sdpa")
    assert step_weight_bytes(ours, 1) == step_weight_bytes(reference.module, 1)
    assert mean_step_bytes(0, lambda n: reference.kv_bytes(1, n), 9, 2) == reference.kv_bytes(1, 11) - (
        reference.kv_bytes(1, 1) / 2
    )


def test_bandwidth_probe():
    sample = measure_bandwidth(torch.device("cpu"), num_bytes=2**20, min_run_time=0.01)
    assert sample.num_bytes == 2**20 and sample.gb_per_s > 0
    assert 256 * 2**20 <= default_bandwidth_bytes(torch.device("cpu")) <= 2 * 2**30


def test_the_decoder_runs_through_the_same_bench():
    config = DecodeBenchConfig(
        model=TINY,
        quants=("none", "int8"),
        contexts=(4,),
        new_tokens=2,
        device="cpu",
        min_run_time=0.01,
        bandwidth_bytes=2**20,
        reference=False,
        decoder=True,
    )
    result = run_decode_bench(config)
    assert result.header.model_class == "attnlab.models.Decoder"
    assert [(row.impl, row.quant, row.status) for row in result.rows] == [
        ("sdpa", "none", "ok"),
        ("sdpa", "int8", "ok"),
    ]
    float_row, int8_row = result.rows
    assert float_row.logits_error == 0  # the first row is the reference without transformers
    assert 1e-5 < int8_row.logits_error < 5e-2
    assert int8_row.weight_bytes < float_row.weight_bytes / 2 and int8_row.kv_bytes == float_row.kv_bytes


#: seconds each fake generate call "takes", by its number of new tokens
_SECONDS: dict[int, float] = {}


class _FixedTimer:
    """A stand-in for torch.utils.benchmark.Timer whose every call 'takes' a set time per generate length."""

    def __init__(self, stmt, globals, num_threads=1):
        assert num_threads == torch.get_num_threads()  # the reference runs on the same threads as the rows
        self.run = globals["run"]

    def timeit(self, number):
        return type("Measurement", (), {"median": _SECONDS[self.run()]})()


def test_reference_timing_is_the_median_pair_difference_and_refuses_a_negative_one(monkeypatch):
    import attnlab.bench.hf_generate as hf_generate

    reference = object.__new__(GenerateReference)  # no model: _generate is replaced
    reference.device = torch.device("cpu")
    monkeypatch.setattr(reference, "_generate", lambda prompt, count: count)
    monkeypatch.setattr(hf_generate, "Timer", _FixedTimer)
    monkeypatch.setitem(_SECONDS, 5, 0.9)
    monkeypatch.setitem(_SECONDS, 1, 0.1)
    timing = reference.decode_timing(torch.zeros(1, 3), 4, min_run_time=1e-9)
    assert timing.median_s == pytest.approx(0.8) and timing.num_samples == 3
    monkeypatch.setitem(_SECONDS, 5, 0.05)  # the load made the longer call look shorter
    with pytest.raises(ValueError, match=r"generate\(5\) took no longer than generate\(1\)"):
        reference.decode_timing(torch.zeros(1, 3), 4, min_run_time=1e-9)
