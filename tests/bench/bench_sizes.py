"""The tiny benchmark sizes shared by the bench tests (a module of its own: every test folder has a conftest)."""

#: Small enough that a case takes milliseconds; accuracy_tokens < seq_len exercises the prefix check.
TINY = dict(
    batch=2,
    seq_len=32,
    d_model=32,
    num_heads=4,
    min_run_time=0.01,
    min_samples=3,
    peak_matmul_size=256,
    accuracy_tokens=16,
)
