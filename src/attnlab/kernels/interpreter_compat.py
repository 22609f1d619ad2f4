"""A fix for Triton's CPU interpreter under NumPy >= 2.4 (triton-lang/triton#9171, fixed after 3.6).

The interpreter keeps kernel scalars as one-element NumPy arrays and turns them into Python ints
with ``int(array)``, which NumPy 2.4 refuses for arrays with a dimension; so any ``range()`` loop
with a run-time bound fails. Upstream's fix squeezes the array first; this module applies the same
one-line change to Triton versions that lack it. Only the interpreter is touched, only when it is
active, and only once.
"""

from __future__ import annotations

import functools

__all__ = ["apply_interpreter_fix"]


def _needs_fix() -> bool:
    import numpy as np
    import triton

    if not triton.knobs.runtime.interpret:
        return False
    numpy_version = tuple(int(part) for part in np.__version__.split(".")[:2])
    triton_version = tuple(int(part) for part in triton.__version__.split(".")[:2])
    return numpy_version >= (2, 4) and triton_version <= (3, 6)


@functools.cache
def apply_interpreter_fix() -> bool:
    """Patch the interpreter's scalar-to-int conversion if this Triton and NumPy need it; True if patched."""
    if not _needs_fix():
        return False
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_lang_tensor
    return True
