"""Loads libepd-client and declares its C ABI (include/epd/*.h) for ctypes.

Search order for the library (the first that loads wins; the error lists
every place tried and why each failed):
  1. $EPD_CLIENT_LIBRARY (a path to the .so);
  2. a copy installed next to this package (pip wheels put it in epd/);
  3. the path recorded when CMake staged or installed this package
     (epd/_paths.py: the build tree's or the install prefix's libdir);
  4. the build tree of a source checkout: $EPD_BUILD_DIR, then <repo>/build;
  5. the system loader (libepd-client.so.0 on the default search path).
The library is loaded once per process with RTLD_GLOBAL, so the torch ops
extension (linked against libepd-client.so.0) binds to this same copy and a
handle made here is valid there. Thread-safe after the first load (a lock
guards it).
"""
from __future__ import annotations

import ctypes
import glob
import os
import threading
from pathlib import Path

from ._status import EpdError, Status

_SONAME = "libepd-client.so.0"
_lock = threading.Lock()
_lib = None
_lib_path = None

# ---- C structs (field order and types exactly as in include/epd/*.h) ----------------------------

NAME_MAX = 64
GPU_HOST = -1


class Placement(ctypes.Structure):
    _fields_ = [("node", ctypes.c_int32), ("gpu", ctypes.c_int32)]


class GroupSpec(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("name", ctypes.c_char * NAME_MAX),
        ("generation", ctypes.c_uint64),
        ("world_size", ctypes.c_int32),
        ("rank", ctypes.c_int32),
        ("placement", ctypes.POINTER(Placement)),
        ("num_experts", ctypes.c_int32),
        ("top_k", ctypes.c_int32),
        ("expert_owner", ctypes.POINTER(ctypes.c_int32)),
        ("hidden", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("dispatch_quant", ctypes.c_int32),
        ("max_tokens_per_rank", ctypes.c_int32),
        ("mode", ctypes.c_int32),
        ("layout", ctypes.c_int32),
        ("slots", ctypes.c_int32),
        ("timeout_ms", ctypes.c_uint32),
        ("sm_budget", ctypes.c_int32),
        ("executor", ctypes.c_int32),
    ]


class ClientInfo(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("protocol_major", ctypes.c_uint32),
        ("protocol_minor", ctypes.c_uint32),
        ("daemon_pid", ctypes.c_int32),
        ("capabilities", ctypes.c_uint64),
        ("session_id", ctypes.c_uint64),
        ("daemon_version", ctypes.c_char * 32),
    ]


class DispatchArgs(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("x", ctypes.c_void_p),
        ("topk_ids", ctypes.c_void_p),
        ("id_dtype", ctypes.c_int32),
        ("topk_weights", ctypes.c_void_p),
        ("n_tokens", ctypes.c_int32),
    ]


class DispatchResult(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("total_rows", ctypes.c_int32),
        ("capacity_rows", ctypes.c_int64),
        ("ids_per_row", ctypes.c_int32),
        ("num_local_experts", ctypes.c_int32),
        ("x", ctypes.c_void_p),
        ("scales", ctypes.c_void_p),
        ("ids", ctypes.c_void_p),
        ("weights", ctypes.c_void_p),
        ("src", ctypes.c_void_p),
        ("counts", ctypes.c_void_p),
        ("combine_in", ctypes.c_void_p),
        ("x_row_bytes", ctypes.c_uint64),
        ("combine_row_bytes", ctypes.c_uint64),
    ]


class GpuDispatchArgs(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("x", ctypes.c_void_p),
        ("topk_ids", ctypes.c_void_p),
        ("topk_weights", ctypes.c_void_p),
        ("n_tokens_device", ctypes.c_void_p),
        ("n_tokens", ctypes.c_int32),
    ]


class GpuViews(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("device", ctypes.c_int32),
        ("send_x", ctypes.c_void_p),
        ("send_ids", ctypes.c_void_p),
        ("send_weights", ctypes.c_void_p),
        ("recv_total", ctypes.c_void_p),
        ("recv_counts", ctypes.c_void_p),
        ("recv_x", ctypes.c_void_p),
        ("recv_scales", ctypes.c_void_p),
        ("recv_ids", ctypes.c_void_p),
        ("recv_weights", ctypes.c_void_p),
        ("recv_src", ctypes.c_void_p),
        ("combine_in", ctypes.c_void_p),
        ("combine_out", ctypes.c_void_p),
        ("capacity_rows", ctypes.c_int64),
        ("ids_per_row", ctypes.c_int32),
        ("num_local_experts", ctypes.c_int32),
        ("x_row_bytes", ctypes.c_uint64),
        ("combine_row_bytes", ctypes.c_uint64),
    ]


_c = ctypes
_vp = ctypes.c_void_p
_st = ctypes.c_int32  # epd_status_t
# name: (restype, argtypes)
_PROTOTYPES = {
    "epd_status_string": (_c.c_char_p, [_st]),
    "epd_group_spec_init": (None, [_c.POINTER(GroupSpec)]),
    "epd_group_spec_validate": (_st, [_c.POINTER(GroupSpec), _c.c_char_p, _c.c_size_t]),
    "epd_group_spec_workspace_bytes": (_st, [_c.POINTER(GroupSpec), _c.c_int32, _c.c_int32,
                                             _c.POINTER(_c.c_uint64)]),
    "epd_client_connect": (_st, [_c.c_char_p, _c.POINTER(_vp)]),
    "epd_client_disconnect": (None, [_vp]),
    "epd_client_query": (_st, [_vp, _c.POINTER(ClientInfo)]),
    "epd_client_last_error": (_c.c_char_p, [_vp]),
    "epd_group_join": (_st, [_vp, _c.POINTER(GroupSpec), _c.POINTER(_vp)]),
    "epd_group_leave": (_st, [_vp]),
    "epd_group_last_error": (_c.c_char_p, [_vp]),
    "epd_group_dispatch": (_st, [_vp, _c.c_int32, _c.POINTER(DispatchArgs)]),
    "epd_group_dispatch_wait": (_st, [_vp, _c.c_int32, _c.c_uint32, _c.POINTER(DispatchResult)]),
    "epd_group_combine": (_st, [_vp, _c.c_int32, _c.c_int32]),
    "epd_group_combine_wait": (_st, [_vp, _c.c_int32, _c.c_uint32, _c.POINTER(_vp)]),
    "epd_group_gpu_views": (_st, [_vp, _c.c_int32, _c.POINTER(GpuViews)]),
    "epd_group_dispatch_async": (_st, [_vp, _c.c_int32, _c.POINTER(GpuDispatchArgs), _vp]),
    "epd_group_dispatch_wait_async": (_st, [_vp, _c.c_int32, _vp]),
    "epd_group_combine_async": (_st, [_vp, _c.c_int32, _c.c_int32, _vp, _c.c_int64, _vp]),
    "epd_group_combine_wait_async": (_st, [_vp, _c.c_int32, _vp]),
    "epd_group_gpu_status": (_st, [_vp, _c.c_int32, _c.c_uint32]),
}


def _candidates():
    """(label, path-or-name) pairs in search order."""
    out = []
    env = os.environ.get("EPD_CLIENT_LIBRARY")
    if env:
        out.append(("$EPD_CLIENT_LIBRARY", env))
    here = Path(__file__).resolve().parent
    for p in sorted(glob.glob(str(here / "libepd-client.so*"))):
        out.append(("next to the package", p))
    try:
        from . import _paths  # written by CMake when it stages or installs the package
        for p in _paths.CLIENT_LIBRARIES:
            out.append((_paths.WHERE, p))
    except ImportError:
        pass
    repo = here.parent.parent
    build_dirs = [os.environ["EPD_BUILD_DIR"]] if os.environ.get("EPD_BUILD_DIR") else []
    build_dirs.append(str(repo / "build"))
    for b in build_dirs:
        out.append(("build tree", str(Path(b) / "libclient" / _SONAME)))
    out.append(("system loader", _SONAME))
    return out


def _declare(lib):
    for name, (res, args) in _PROTOTYPES.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args


def load():
    """The loaded libepd-client (ctypes.CDLL); raises EpdError(UNSUPPORTED) naming every place tried."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        tried = []
        for label, path in _candidates():
            if os.sep in path and not os.path.exists(path):
                tried.append(f"{label}: {path} (no such file)")
                continue
            try:
                lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                _declare(lib)
            except (OSError, AttributeError) as e:
                tried.append(f"{label}: {path} ({e})")
                continue
            _check_abi(lib, path)
            _lib, _lib_path = lib, path
            return lib
        raise EpdError(Status.UNSUPPORTED, "libepd-client not found; tried: " + "; ".join(tried) +
                       ". Set EPD_CLIENT_LIBRARY to the library's path, or build the project (tools/build)")


def library_path():
    """The path (or soname) libepd-client was loaded from."""
    load()
    return _lib_path


def _check_abi(lib, path):
    """The ctypes spec must be the C struct: epd_group_spec_init writes sizeof(epd_group_spec_t)."""
    s = GroupSpec()
    lib.epd_group_spec_init(ctypes.byref(s))
    if s.struct_size != ctypes.sizeof(GroupSpec):
        raise EpdError(Status.VERSION_MISMATCH,
                       f"{path}: sizeof(epd_group_spec_t) = {s.struct_size} but this package expects "
                       f"{ctypes.sizeof(GroupSpec)}; install the package and the library from one version")


def status_string(code: int) -> str:
    return load().epd_status_string(int(code)).decode(errors="replace")


def client_error(client) -> str:
    m = load().epd_client_last_error(client)
    return m.decode(errors="replace") if m else ""


def group_error(group) -> str:
    m = load().epd_group_last_error(group)
    return m.decode(errors="replace") if m else ""


def check_client(rc: int, client) -> None:
    """Raises EpdError with the client's (or, for None, the thread's) last message when rc != 0."""
    if rc != 0:
        raise EpdError(rc, client_error(client) or status_string(rc))


def check_group(rc: int, group) -> None:
    if rc != 0:
        raise EpdError(rc, group_error(group) or status_string(rc))
