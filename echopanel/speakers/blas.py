"""Run numpy's OpenBLAS on the calling thread only, for the small matrix products of the speaker encoder.

OpenBLAS splits even a (3, 256) x (256, 1024) product over its threads; on a 2-core machine that is also
transcribing, the threads wait on each other and one embedding took 40-1000 ms instead of 20-50 ms. OpenBLAS 0.3.27+
has a per-thread setting (``openblas_set_num_threads_local``) that changes nothing for other threads; numpy's wheels
bundle such a build. Where it is not found (another BLAS, e.g. Accelerate), this is a no-op.
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np


def _find_local_setter() -> Callable[[int], int] | None:
    root = os.path.dirname(np.__file__)
    candidates = glob.glob(os.path.join(root, os.pardir, "numpy.libs", "*openblas*")) + glob.glob(
        os.path.join(root, ".dylibs", "*openblas*")
    )
    for path in sorted(candidates):
        try:
            lib = ctypes.CDLL(os.path.realpath(path))  # the copy numpy already loaded: same handle
            fn = lib.openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int]
        fn.restype = ctypes.c_int
        return fn
    return None


_SET_LOCAL = _find_local_setter()


@contextmanager
def single_thread_blas() -> Iterator[None]:
    """Within the block, BLAS calls from this thread use one thread (no effect on other threads)."""
    if _SET_LOCAL is None:
        yield
        return
    previous = _SET_LOCAL(1)
    try:
        yield
    finally:
        _SET_LOCAL(previous)
