"""Triton kernels (GPU, or the CPU under ``TRITON_INTERPRET=1``) for attnlab's FlashAttention.

Importing this package does not import Triton; its modules do, so they are imported only when a
kernel is about to run (see :mod:`attnlab.backends.flash_triton`), and CPU-only installs work without
Triton.

- :mod:`.tiles`: what the kernels share: which block a program owns, which keys a query block sees,
  masked tile loads and stores;
- :mod:`.flash_fwd`: the forward kernel (online softmax, saves out and the log-sum-exp);
- :mod:`.flash_bwd`: the backward kernels (dq with the row terms ``delta``, then dk and dv);
- :mod:`.launch`: the Python side: grids, strides, launches;
- :mod:`.config`: block configurations and per-device defaults (no Triton import);
- :mod:`.interpreter_compat`: a fix for Triton 3.6's CPU interpreter under NumPy 2.4.
"""

__all__: list[str] = []
