"""Client: one connection of this worker process to the local epd daemon.

Ownership: a Client owns its epd_client_t; close() (or the context manager,
or garbage collection) disconnects it, which makes the daemon see every
group still joined through it as left. A Group keeps its Client alive.
Thread-safety: as libepd-client's: `info`, `join` may be called from several
threads; `close` must not race any other call on the client.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _lib, _spec
from ._status import EpdError, Status
from ._spec import Capability

if TYPE_CHECKING:
    from .group import Group


@dataclass(frozen=True)
class Info:
    """Daemon facts from epd_client_query."""
    protocol: tuple          # (major, minor)
    daemon_pid: int
    daemon_version: str
    capabilities: Capability
    session_id: int


class Client:
    """A connection to the daemon; make one with epd.connect()."""

    def __init__(self, handle: int, socket_path: str | None):
        self._handle = handle
        self.socket_path = socket_path

    @property
    def handle(self) -> int:
        """The epd_client_t* as an int (0 once closed)."""
        return self._handle or 0

    def _live(self):
        if not self._handle:
            raise EpdError(Status.INVALID_ARGUMENT, "the client is closed")
        return self._handle

    @property
    def info(self) -> Info:
        """Protocol version, daemon pid and version, capabilities (epd_client_query)."""
        h = self._live()
        out = _lib.ClientInfo()
        out.struct_size = ctypes.sizeof(out)
        _lib.check_client(_lib.load().epd_client_query(h, ctypes.byref(out)), h)
        return Info(protocol=(out.protocol_major, out.protocol_minor), daemon_pid=out.daemon_pid,
                    daemon_version=out.daemon_version.decode(errors="replace"),
                    capabilities=Capability(out.capabilities), session_id=out.session_id)

    def join(self, **spec) -> "Group":
        """Joins (creating on first join) the group described by the keyword arguments.

        Fields and defaults are epd_group_spec_t's (epd.spec_defaults()): name,
        generation, world_size, rank, placement (list of (node, gpu) or None),
        num_experts, top_k, expert_owner (list or None), hidden, dtype ('bf16',
        'fp16', 'fp32', a torch dtype or epd.DType), dispatch_quant ('none',
        'fp8_e4m3_block128'), max_tokens_per_rank, mode ('high_throughput',
        'low_latency'), layout ('rank_major', 'expert_major'), slots,
        timeout_ms, sm_budget, executor ('daemon', 'inline'). The spec is checked by epd_group_spec_validate
        first (EpdError INVALID_SPEC naming the field), then by the daemon.
        Blocks until every rank has joined or timeout_ms passes."""
        from .group import Group
        h = self._live()
        s, keep = _spec.build_spec(spec)
        _spec.validate(s)
        out = ctypes.c_void_p()
        _lib.check_client(_lib.load().epd_group_join(h, ctypes.byref(s), ctypes.byref(out)), h)
        fields = _spec.as_dict(s)
        del keep
        return Group(self, out.value, fields)

    def close(self) -> None:
        """Disconnects (epd_client_disconnect); groups still joined are seen as left. Idempotent."""
        h, self._handle = self._handle, None
        if h:
            _lib.load().epd_client_disconnect(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone already
            pass

    def __repr__(self):
        return f"epd.Client(socket={self.socket_path!r}, handle={self.handle:#x})"


def connect(socket_path: str | os.PathLike | None = None) -> Client:
    """Connects to the daemon at socket_path (None: $EPD_SOCKET, else /run/epd/epd.sock).

    Raises EpdError (DAEMON_LOST when no daemon answers there, VERSION_MISMATCH,
    PERMISSION, ...) with the library's message."""
    lib = _lib.load()
    path = os.fspath(socket_path) if socket_path is not None else None
    out = ctypes.c_void_p()
    rc = lib.epd_client_connect(path.encode() if path is not None else None, ctypes.byref(out))
    _lib.check_client(rc, None)
    return Client(out.value, path)
