"""A scoped OpenBLAS thread limit for the small matrix products of the proposal pipeline."""

from __future__ import annotations

from typing import Any


class _BlasThreads:
    """Scoped OpenBLAS thread limit (numpy's matmul). Multi-threaded OpenBLAS next to onnxruntime's
    threads on a busy 2-core machine was 4-8x slower than one thread for these small products.
    Best effort: a no-op where the library cannot be found (non-Linux, other BLAS)."""

    _fns: Any = False  # False = not looked up yet, None = not found, else (get, set)

    @classmethod
    def _find(cls) -> Any:
        if cls._fns is not False:
            return cls._fns
        cls._fns = None
        try:
            import ctypes

            with open("/proc/self/maps") as f:
                libs = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ln.split()[-1].startswith("/")})
            for path in libs:
                lib = ctypes.CDLL(path)
                for pre, suf in (("scipy_", "64_"), ("", "64_"), ("", ""), ("scipy_", "")):
                    get = getattr(lib, f"{pre}openblas_get_num_threads{suf}", None)
                    put = getattr(lib, f"{pre}openblas_set_num_threads{suf}", None)
                    if get is not None and put is not None:
                        put.argtypes = [ctypes.c_int]
                        cls._fns = (get, put)
                        return cls._fns
        except (OSError, AttributeError, ValueError):
            pass
        return None

    def __enter__(self) -> None:
        fns = self._find()
        self._old = None
        if fns is not None:
            self._old = int(fns[0]())
            if self._old != 1:
                fns[1](1)

    def __exit__(self, *exc: Any) -> None:
        fns = self._find()
        if fns is not None and self._old is not None and self._old != 1:
            fns[1](self._old)


def single_thread_blas() -> _BlasThreads:
    return _BlasThreads()

