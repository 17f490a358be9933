"""Native kernels for the VSML hot path, compiled on first use.

`dense_lstm.c` fuses the K micro ticks of a dense layer's sub-LSTMs (no
autograd). It is built with the machine's C compiler into a per-user cache and
loaded with ctypes, so it needs no PyTorch headers and builds in about a
second. Without a compiler, or with VSML_NATIVE=0, the PyTorch path runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("dense_lstm.c")
FLAG_SETS = (
    ["-O3", "-march=native", "-ffast-math"],
    ["-O3", "-ffast-math"],
    ["-O3"],
)


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "vsml" / "kernels"


def _compile(compiler: str, source: Path) -> Path | None:
    """Build a shared library; the name hashes source, flags and machine."""
    for flags in FLAG_SETS:
        key = hashlib.sha256(
            source.read_bytes()
            + " ".join([compiler, *flags, platform.machine(), platform.node()]).encode()
        ).hexdigest()[:16]
        target = _cache_dir() / f"dense_lstm-{key}.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the target, then rename: concurrent builds never see a
        # half-written library.
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            cmd = [compiler, *flags, "-shared", "-fPIC", "-o", str(out), str(source)]
            if subprocess.run(cmd, capture_output=True).returncode == 0:
                os.replace(out, target)
                return target
    return None


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("VSML_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    path = _compile(compiler, SOURCE) if compiler else None
    if path is None:
        warnings.warn(
            "no C compiler could build vsml/kernels/dense_lstm.c; the VSML layer "
            "update runs on the slower PyTorch path (install gcc to fix)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    lib = ctypes.CDLL(str(path))
    lib.vsml_dense_update.restype = ctypes.c_int
    lib.vsml_dense_update.argtypes = [ctypes.c_void_p] * 10 + [ctypes.c_int64] * 8
    return lib


@functools.cache
def kernel_threads() -> int:
    """Threads for the kernel: VSML_THREADS, else PyTorch's count at first use."""
    return int(os.environ.get("VSML_THREADS", 0)) or torch.get_num_threads()


@contextlib.contextmanager
def single_threaded_torch(device: torch.device) -> Iterator[None]:
    """Run PyTorch's CPU ops on one thread inside the block.

    The hot loops here (the kernel, online baselines) issue many small ops
    that gain nothing from threads, and on a loaded machine PyTorch's OpenMP
    workers spinning at barriers made them 10-40x slower (measured: online
    SGD 1 s on one thread against 38 s on two). The kernel keeps its own
    threads (`kernel_threads`).
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    kernel_threads()  # fix the kernel's thread count before changing PyTorch's
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="vsml-kernel")


def available() -> bool:
    """Whether the native kernel is built and enabled on this machine."""
    return _library() is not None


def dense_supported(h: Tensor) -> bool:
    """Whether the fused kernel can update these states (CPU float32, no grad)."""
    S = h.shape[-1]
    return (
        h.device.type == "cpu"
        and h.dtype == torch.float32
        and S % 8 == 0
        and S <= 64
        # No autograd through the kernel: with gradients on, the parameters
        # need a graph even where the state tensors do not.
        and not torch.is_grad_enabled()
        and _library() is not None
    )


def dense_update(
    fwd_in: Tensor,
    col: Tensor,
    w: Tensor,
    bias: Tensor,
    h: Tensor,
    c: Tensor,
    ticks: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """K fused LSTM ticks of an A x B grid of sub-LSTMs.

    Args:
        fwd_in: [P, N, A, M] incoming forward messages.
        col: [P, N, B, 4S] backward-message terms g[b] @ W_g.
        w: [P, 2M + S, 4S] LSTM weights; bias: [P, 4S].
        h, c: [P, N, A, B, S] states, updated in place when contiguous.

    Returns:
        New h and c, and h summed over b [P, N, A, S] and over a [P, N, B, S].
    """
    lib = _library()
    assert lib is not None, "call dense_ticks_supported() first"
    P, N, A, B, S = h.shape
    M = fwd_in.shape[-1]
    # h and c are updated in place: fresh 8 MB outputs per call cost more in
    # page faults and memory traffic than the LSTM arithmetic at K = 1.
    h_out, c_out = h.contiguous(), c.contiguous()
    ins = [t.contiguous() for t in (fwd_in, col, w, bias)] + [h_out, c_out]
    pool_b = h.new_empty(P, N, A, S)
    rows = P * N * A
    threads = max(1, min(kernel_threads(), rows))
    # Each thread adds its rows into its own sum over a; they are added below.
    pool_a = h.new_zeros(threads, P, N, B, S)

    def run(part: int) -> int:
        begin, end = rows * part // threads, rows * (part + 1) // threads
        pointers = [t.data_ptr() for t in (*ins, h_out, c_out, pool_b, pool_a[part])]
        return lib.vsml_dense_update(*pointers, N, A, B, M, S, ticks, begin, end)

    # ctypes releases the GIL during the call, so the threads run in parallel.
    codes = set(_pool(threads).map(run, range(threads)))
    if -2 in codes:
        raise MemoryError("dense kernel could not allocate its scratch space")
    if codes != {0}:
        raise ValueError(f"dense kernel rejected state size {S}")
    return h_out, c_out, pool_b, pool_a.sum(dim=0)
