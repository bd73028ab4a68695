"""The data plane as PyTorch custom ops, torch.ops.epd.*, and thin Python wrappers.

Ops (namespace `epd`, schemas registered by the C++ extension
libepd_torch_ops.so, built on the torch stable ABI; see python/README.md):

  dispatch(Tensor(a!) token, int group, int slot, Tensor? x, Tensor? topk_ids,
           Tensor? topk_weights, Tensor? n_tokens_device, int n_tokens) -> ()
  dispatch_wait(Tensor(a!) token, int group, int slot, int timeout_ms=0) -> ()
  combine(Tensor(a!) token, int group, int slot, int weight_mode,
          Tensor? expert_out=None, int rows=0) -> ()
  combine_wait(Tensor(a!) token, int group, int slot, Tensor(b!)? out=None,
               int timeout_ms=0) -> ()
  device_bytes(int address, int nbytes, int device) -> Tensor   (a uint8 CUDA view)
  call_floor(<dispatch's arguments>) -> ()   (does nothing: python/bench/op_overhead.py's
                                              floor, what torch's op call itself costs)

`token` is Group.token(slot): its device picks the kernel (CUDA: the
epd_group_*_async calls on the current CUDA stream, legal under graph
capture; CPU: the blocking host calls) and its declared mutation keeps
torch.compile from dropping or reordering the calls. `group` is
Group.handle. Errors raise RuntimeError whose text starts with
"[epd status N]"; the wrappers below turn them into EpdError.
Thread-safety: as the C calls (one slot from one thread at a time).
"""
from __future__ import annotations

import functools
import glob
import os
import re
import threading
from pathlib import Path

from . import _lib
from ._spec import WeightMode, enum_value
from ._status import EpdError, Status

_lock = threading.Lock()
_state = {"loaded": None, "error": None, "path": None}
_op = {}  # name -> torch.ops.epd.<name>.default (an OpOverload: no overload resolution per call)
_ERR = re.compile(r"\[epd status (-?\d+)\] (.*)", re.S)
OPS_LIBRARY = "libepd_torch_ops.so"


def _candidates():
    out = []
    if os.environ.get("EPD_TORCH_OPS_LIBRARY"):
        out.append(os.environ["EPD_TORCH_OPS_LIBRARY"])
    here = Path(__file__).resolve().parent
    out += sorted(glob.glob(str(here / OPS_LIBRARY)))
    try:
        from . import _paths
        out += list(_paths.OPS_LIBRARIES)
    except ImportError:
        pass
    if os.environ.get("EPD_BUILD_DIR"):
        out.append(str(Path(os.environ["EPD_BUILD_DIR"]) / "python" / "epd" / OPS_LIBRARY))
    out.append(str(here.parent.parent / "build" / "python" / "epd" / OPS_LIBRARY))
    return out


def load() -> bool:
    """Loads the ops extension (once). False, with the reason in load_error(), when torch or the
    extension is missing; the control plane works without it."""
    if _state["loaded"] is not None:
        return _state["loaded"]
    with _lock:
        if _state["loaded"] is None:
            _state["loaded"] = _load()
    return _state["loaded"]


def _load() -> bool:
    try:
        import torch
    except ImportError as e:
        _state["error"] = f"torch is not importable: {e}"
        return False
    _lib.load()  # the extension's DT_NEEDED libepd-client.so.0 binds to this copy
    tried = []
    for p in _candidates():
        if not os.path.exists(p):
            tried.append(f"{p} (no such file)")
            continue
        try:
            torch.ops.load_library(p)
        except (OSError, RuntimeError) as e:
            tried.append(f"{p} ({e})")
            continue
        _register_fakes(torch)
        for name in ("dispatch", "dispatch_wait", "combine", "combine_wait"):
            _op[name] = getattr(torch.ops.epd, name).default
        _state["path"] = p
        return True
    _state["error"] = ("the torch ops extension " + OPS_LIBRARY + " was not found or did not load; tried: " +
                       "; ".join(tried) + ". Build it with the project's CMake (torch importable) or "
                       "pip install --no-build-isolation ./python")
    return False


def available() -> bool:
    """True when torch.ops.epd.* are registered."""
    return load()


def load_error() -> str | None:
    load()
    return _state["error"]


def _register_fakes(torch):
    """Meta/fake implementations: the ops return nothing and only mutate their arguments in place."""
    def nothing(*args, **kwargs):
        return None
    for name in ("dispatch", "dispatch_wait", "combine", "combine_wait"):
        torch.library.register_fake(f"epd::{name}")(nothing)


def _require():
    if not load():
        raise EpdError(Status.UNSUPPORTED, _state["error"])
    import torch
    return torch


def _translated(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:
            if isinstance(e, EpdError):
                raise
            m = _ERR.search(str(e))
            if not m:
                raise
            raise EpdError(int(m.group(1)), m.group(2).strip()) from None
    return wrapper


def _rows_bound(group, what, n):
    mt = group.spec["max_tokens_per_rank"]
    if not 0 <= n <= mt:
        raise EpdError(Status.CAPACITY_EXCEEDED if n > mt else Status.INVALID_ARGUMENT,
                       f"{what} = {n} is outside [0, max_tokens_per_rank = {mt}]")


@_translated
def dispatch(group, slot, x=None, topk_ids=None, topk_weights=None, *, n_tokens=None, n_tokens_device=None):
    """Dispatch of `slot`: x [n, hidden] (None on GPU groups when the caller wrote views.send_x,
    send_ids and send_weights), topk_ids [n, top_k] (int32 on GPU groups; int32 or int64 on host
    groups), topk_weights [n, top_k] float32 or None (weights 1). n_tokens: the rows (default: the
    rows of x or topk_ids); with n_tokens_device (an int32 device tensor read when the copy runs,
    e.g. in a replayed CUDA graph) n_tokens is the upper bound of rows copied."""
    _require()
    ref = x if x is not None else topk_ids
    n = int(n_tokens) if n_tokens is not None else (int(ref.shape[0]) if ref is not None else 0)
    _rows_bound(group, "n_tokens", n)
    if topk_ids is not None and topk_ids.dim() == 2 and topk_ids.shape[1] != group.spec["top_k"]:
        raise EpdError(Status.INVALID_ARGUMENT,
                       f"topk_ids has {topk_ids.shape[1]} columns; top_k = {group.spec['top_k']}")
    _op["dispatch"](group.token(slot), group.handle, slot, x, topk_ids, topk_weights, n_tokens_device, n)


@_translated
def dispatch_wait(group, slot, timeout_ms=0):
    """Waits for the slot's dispatch (GPU: enqueued on the current stream; host: blocks at most
    timeout_ms, 0 = the group's) and returns group.views(slot)."""
    _require()
    _op["dispatch_wait"](group.token(slot), group.handle, slot, int(timeout_ms))
    return group.views(slot)


@_translated
def combine(group, slot, weight_mode=WeightMode.ALREADY_APPLIED, expert_out=None, rows=None):
    """Combine of `slot` with weight_mode (epd.WeightMode or its name). expert_out [rows, hidden] in
    the group dtype is copied into combine_in first (None: the caller wrote views.combine_in)."""
    _require()
    mode = int(enum_value(WeightMode, "weight_mode", weight_mode))
    r = int(rows) if rows is not None else (int(expert_out.shape[0]) if expert_out is not None else 0)
    _op["combine"](group.token(slot), group.handle, slot, mode, expert_out, r)


@_translated
def combine_wait(group, slot, out=None, timeout_ms=0):
    """Waits for the slot's combine; with `out` [n, hidden] (n the rows this rank dispatched) copies
    the reduced rows into it and returns it; GPU groups without `out` return views.combine_out."""
    _require()
    if out is not None:
        _rows_bound(group, "out rows", int(out.shape[0]))
    _op["combine_wait"](group.token(slot), group.handle, slot, out, int(timeout_ms))
    if out is not None:
        return out
    return group.views(slot).combine_out if group.is_gpu else None
