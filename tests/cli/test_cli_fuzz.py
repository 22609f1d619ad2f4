"""Random arguments for ``attnlab tour``, ``check`` and ``bench``: every run ends in success or in a one-line
error with exit code 2 (see cli_outcome.py), never a traceback, never a hang.

Generated values are steered so that a run that succeeds stays tiny: sizes are drawn from 1..8 (valid or
not: d_out need not divide by heads), from zero and negatives, or from 10**12 and up, which must be refused
before any work (the memory estimate). Middle values (say 30000 tokens) would be legitimate but slow work,
not a defect, so they are not drawn; neither is ``--compile`` nor the ``flex`` implementation (compilation
takes minutes on a busy 2-core machine). Random strings have no digits, so they never parse as a
mid-size number. Each run gets its own timeout, generous for a loaded machine: a hang fails the test
instead of stalling it.
"""

from pathlib import Path

import pytest
from cli_outcome import CliWorker
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from attnlab.bench import PRESETS
from attnlab.tour import SECTIONS

#: Seconds one run may take. The slowest runs drawn here (a one-layer GPT-2 on two implementations) take
#: about 5 s on an idle 2-core machine; a hang never ends, so a wide margin costs nothing.
RUN_TIMEOUT = 120.0
FUZZ = settings(
    max_examples=20,
    deadline=None,  # each run has its own timeout (RUN_TIMEOUT) in the worker
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

#: Implementations that run in milliseconds at tiny sizes (flex compiles: minutes on a loaded CPU).
CHEAP_IMPLS = ("sdpa", "ch03", "einsum", "fused_qkv", "wrapper", "sdpa_mask", "torch_mha", "flash_torch")


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """Draw from the strategies with these relative weights (``st.one_of`` does not weigh its branches)."""
    return st.sampled_from([strategy for weight, strategy in choices for _ in range(weight)]).flatmap(lambda s: s)


# Text without digits (never a number in disguise, e.g. "٣٣٣٣" is 3333 to int()), NUL or lone surrogates.
garbage = st.text(st.characters(blacklist_categories=("Cs", "Nd"), blacklist_characters="\x00"), max_size=12)
# Valid-looking values are drawn most often, so that many runs get past validation and do real work.


def sizes(*valid: str) -> st.SearchStrategy[str]:
    """Mostly one of ``valid``; else zero or negative, 10**12 and up (refused by the memory estimate), or text."""
    return weighted(
        (12, st.sampled_from(valid)),
        (1, st.integers(-5, 0).map(str)),
        (1, st.integers(10**12, 10**30).map(str)),
        (1, garbage),
    )


size = sizes("1", "2", "4", "8")
heads = sizes("1", "2")  # mostly dividing the widths, so that most runs get past validation
seed = weighted((4, st.integers(0, 100)), (1, st.integers(-(2**70), 2**70))).map(str)
impl_name = weighted((12, st.sampled_from(CHEAP_IMPLS)), (1, st.sampled_from(("nope", "", " ", "flash_triton"))))
impls = weighted((12, st.lists(impl_name, min_size=1, max_size=3).map(",".join)), (1, garbage))
seconds = weighted(
    (8, st.floats(1e-4, 0.02).map(repr)),  # a valid, short budget
    (1, st.floats(max_value=0.0).map(repr)),
    (1, st.floats(min_value=3601.0).map(repr)),
    (1, st.sampled_from(("inf", "-inf", "nan", "1e400", "-0", "abc", ""))),
)
device = weighted(
    (8, st.sampled_from(("cpu", "auto"))),
    (1, st.sampled_from(("cuda", "cuda:7", "mps", "meta", "gpu"))),
    (1, garbage),
)


def output_path(tmp: Path) -> st.SearchStrategy[str]:
    """Where output may go: a new or existing directory (mostly), a file, a path under a file, or ""."""
    afile = tmp / "afile"
    afile.write_text("not a directory")
    (tmp / "adir").mkdir(exist_ok=True)
    return weighted(
        (3, st.sampled_from((str(tmp / "new-dir"), str(tmp / "adir"), str(tmp / "adir/a/b")))),
        (1, st.sampled_from((str(afile), str(afile / "sub"), ""))),
    )


def options(pairs: dict[str, st.SearchStrategy[str] | None]) -> st.SearchStrategy[list[str]]:
    """Each option absent (two times in three) or given with a drawn value (flags: present or not)."""
    drawn = []
    for flag, values in pairs.items():
        given = st.just([flag]) if values is None else values.map(lambda v, f=flag: [f, v])
        drawn.append(weighted((2, st.just([])), (1, given)))
    extra = weighted((12, st.just([])), (1, st.sampled_from((["--bogus"], ["stray"]))))
    return st.tuples(*drawn, extra).map(lambda parts: [item for part in parts for item in part])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-fuzz")


@pytest.fixture(scope="module")
def worker(workdir):
    with CliWorker(timeout=RUN_TIMEOUT, cwd=workdir) as cli:
        yield cli


def assert_clean(worker: CliWorker, argv: list[str]) -> None:
    outcome = worker.run(argv)
    event(outcome.kind)  # pytest --hypothesis-show-statistics: how many runs succeeded, how many were refused
    assert outcome.problem() is None, outcome.report()


@FUZZ
@given(data=st.data())
def test_tour_ends_cleanly(worker, workdir, data):
    argv = data.draw(
        options(
            {
                "--section": weighted((4, st.sampled_from(tuple(SECTIONS))), (1, st.just("attention")), (1, garbage)),
                "--move-to": weighted(
                    (4, st.sampled_from(("meta", "meta:0"))),
                    (1, st.sampled_from(("cpu", "cuda", "cuda:3", "mps", "xla"))),
                    (1, garbage),
                ),
                "--plots": output_path(workdir),
            }
        )
    )
    assert_clean(worker, ["tour", *argv])


@FUZZ
@given(data=st.data())
def test_check_ends_cleanly(worker, data):
    argv = data.draw(
        options(
            {
                "--batch": size,
                "--seq-len": size,
                "--d-in": size,
                "--d-out": size,
                "--heads": heads,
                "--no-qkv-bias": None,
                "--seed": seed,
                "--device": device,
            }
        )
    )
    # --impl is always given: the default is every implementation, flex's compilation included.
    assert_clean(worker, ["check", "--impl", data.draw(impls), *argv])


@settings(FUZZ, max_examples=25)  # two kinds of run (one layer, the whole model): a few more examples
@given(data=st.data())
def test_bench_ends_cleanly(worker, workdir, data):
    always = ["--min-run-time", data.draw(seconds)]
    if data.draw(st.booleans()):  # the whole GPT model: small sizes always given (the defaults take long)
        layers = weighted((6, st.just("1")), (1, size))  # each implementation builds its own model
        model_impls = weighted((12, st.lists(impl_name, min_size=1, max_size=2).map(",".join)), (1, garbage))
        argv = [
            *["--impl", data.draw(model_impls), "--model"],
            data.draw(weighted((4, st.just("gpt2")), (1, st.just("gpt2-medium")), (1, garbage))),
            *["--layers", data.draw(layers), "--prompt-len", data.draw(size), "--new-tokens", data.draw(size)],
            *data.draw(
                options(
                    {
                        "--batch": size,
                        "--seed": seed,
                        "--dtype": weighted((4, st.just("float32")), (1, st.just("bad"))),
                        "--out": output_path(workdir),
                        "--seq": size,  # refused with --model
                    }
                )
            ),
        ]
    else:  # one layer: every size given, so no preset's (larger) default runs
        shape = {"--batch": size, "--seq": size, "--d-model": sizes("2", "4", "8"), "--heads": heads}
        argv = [
            "--impl",
            data.draw(impls),
            *[item for flag, values in shape.items() for item in (flag, data.draw(values))],
        ]
        argv += data.draw(
            options(
                {
                    "--preset": weighted((4, st.sampled_from(tuple(PRESETS))), (1, garbage)),
                    "--mode": weighted((6, st.sampled_from(("forward", "backward", "both"))), (1, st.just("x"))),
                    "--dtype": weighted((6, st.sampled_from(("float32", "bfloat16", "float16"))), (1, st.just("f64"))),
                    "--device": device,
                    # A sweep's key is also given as a size here: refused (sweeps run in test_cli_bench.py).
                    "--sweep": st.sampled_from(("seq=4,8", "heads=1,2", "seq=", "dropout=1", "batch=10000000000000"))
                    | garbage,
                    "--seed": seed,
                    "--out": output_path(workdir),
                }
            )
        )
        # The memory worker costs a process start per run: measure memory in one run out of four.
        argv += data.draw(st.sampled_from((["--no-memory"], ["--no-memory"], ["--no-memory"], [])))
    assert_clean(worker, ["bench", *always, *argv])
