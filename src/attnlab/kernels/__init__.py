"""Triton kernels (GPU, or the CPU under ``TRITON_INTERPRET=1``) for attnlab's FlashAttention.

Importing this package does not import Triton; its modules do, so they are imported only when a
kernel is about to run (see :mod:`attnlab.backends.flash_triton`), and CPU-only installs work without
Triton.

- :mod:`.tiles`: masked tile loads and stores shared by the kernels;
- :mod:`.flash_fwd`: the forward kernel (online softmax, saves out and the log-sum-exp);
- :mod:`.flash_bwd`: the backward kernels (dq with the row terms ``delta``, then dk and dv);
- :mod:`.launch`: the Python side: grids, strides, block configurations.
"""

__all__: list[str] = []
