"""Triton kernels (GPU, or the CPU under ``TRITON_INTERPRET=1``) for attnlab's FlashAttention.

Importing this package does not import Triton; its modules do, so they are imported only when a
kernel is about to run (see :mod:`attnlab.backends.flash_triton`), and CPU-only installs work without
Triton.

- :mod:`.tiles`: what the kernels share: which block a program owns, which keys a query sees (one
  interval per query: causal, window, packed sequences), the masked and unmasked phases of a loop,
  masked tile loads and stores;
- :mod:`.scores`: a tile's scores from its dot products: scale, softcap (with a ``tanh``), ALiBi;
- :mod:`.flash_fwd`: the forward kernel (online softmax, saves out and the log-sum-exp);
- :mod:`.flash_bwd`: the backward kernels (the dq pass with the row terms ``delta``, then the dkdv pass);
- :mod:`.launch`: the Python side: grids, strides, feature flags, launches;
- :mod:`.features`: the options of a call as the kernels take them (no Triton import);
- :mod:`.config`: block configurations and per-device defaults (no Triton import);
- :mod:`.interpreter_compat`: a fix for Triton 3.6's CPU interpreter under NumPy 2.4.
"""

__all__: list[str] = []
