"""Group: this process's rank of one EP group, and zero-copy views of its workspace.

Ownership: a Group owns its epd_group_t; leave() (or the context manager)
leaves the group and frees the handle; every view and token taken from it is
then dangling: do not touch them after leave(). The Group keeps its Client
alive. Thread-safety: as libepd-client's: different slots from different
threads; one slot from one thread at a time; nothing concurrently with leave().
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

from . import _lib
from ._spec import DType, Layout, Quant
from ._status import EpdError, Status

_FP8_BLOCK = 128


@dataclass
class Views:
    """Workspace views of one slot as torch tensors (zero-copy).

    Shapes: recv_x [capacity_rows, hidden] (torch.float8_e4m3fn with fp8
    dispatch, else the group dtype); recv_scales [capacity_rows, hidden/128]
    float32 or None; recv_ids / recv_weights [capacity_rows, ids_per_row]
    int32 / float32; recv_src [capacity_rows, 2] int32 (rank, token);
    recv_counts [num_local_experts] int32; recv_total [1] int32; combine_in
    [capacity_rows, hidden] and combine_out [max_tokens_per_rank, hidden] in
    the group dtype; send_x [max_tokens_per_rank, hidden], send_ids /
    send_weights [max_tokens_per_rank, top_k]. expert_major: the rows of local
    expert l start at l * rows_per_expert.

    Host groups: CPU tensors over the shared mapping; the host C API exposes
    only the receive side and combine_in, so recv_total, combine_out and
    send_* are None; total_rows holds the rows of the last dispatch_wait (the
    combine output comes from epd.combine_wait(out=...)). GPU groups: CUDA
    tensors on the group's device, valid until leave(); total_rows is None
    (recv_total holds it on the device)."""
    recv_x: object
    recv_scales: object
    recv_ids: object
    recv_weights: object
    recv_src: object
    recv_counts: object
    recv_total: object
    combine_in: object
    combine_out: object
    send_x: object
    send_ids: object
    send_weights: object
    capacity_rows: int
    ids_per_row: int
    num_local_experts: int
    rows_per_expert: int
    total_rows: int | None


def _torch():
    try:
        import torch
    except ImportError as e:
        raise EpdError(Status.UNSUPPORTED, f"workspace views are torch tensors and torch is not importable: {e}")
    return torch


def _torch_dtype(torch, d: DType):
    return {DType.BF16: torch.bfloat16, DType.FP16: torch.float16, DType.FP32: torch.float32}[d]


def _host_bytes(torch, address: int, nbytes: int):
    buf = (ctypes.c_ubyte * nbytes).from_address(address)
    return torch.frombuffer(buf, dtype=torch.uint8, count=nbytes)


def _device_bytes(torch, address: int, nbytes: int, device: int):
    from . import ops
    if ops.available():
        return torch.ops.epd.device_bytes(address, nbytes, device)

    class _Cai:  # __cuda_array_interface__ needs numpy inside torch
        __cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (address, False), "version": 3}
    return torch.as_tensor(_Cai(), device=f"cuda:{device}")


class Group:
    """One rank of a group; made by Client.join()."""

    def __init__(self, client, handle: int, spec: dict):
        self._client = client
        self._handle = handle
        self.spec = spec
        self.rank = spec["rank"]
        self.world_size = spec["world_size"]
        self.slots = spec["slots"]
        placement = spec["placement"]
        self.device = placement[self.rank][1] if placement else _lib.GPU_HOST
        self.is_gpu = self.device >= 0
        self._views = {}
        self._tokens = {}

    @property
    def handle(self) -> int:
        """The epd_group_t* as an int64, the `group` argument of torch.ops.epd.* (0 once left)."""
        return self._handle or 0

    def _live(self):
        if not self._handle:
            raise EpdError(Status.NOT_JOINED, f"group '{self.spec['name']}' rank {self.rank} was left")
        return self._handle

    def _check_slot(self, slot):
        if not 0 <= int(slot) < self.slots:
            raise EpdError(Status.BAD_SLOT, f"slot = {slot} is outside [0, {self.slots})")

    def token(self, slot: int):
        """The slot's ordering tensor: every torch.ops.epd op on `slot` takes it as its mutated first
        argument, so torch.compile keeps and orders the calls; its device (CPU for host groups, the
        group's GPU otherwise) picks the CPU or CUDA kernel. Its contents are never read or written.
        Taking a token loads the ops extension (epd.ops.load()), so torch.ops.epd.* exist after it."""
        self._check_slot(slot)
        t = self._tokens.get(slot)
        if t is None:
            from . import ops
            ops.load()  # registers torch.ops.epd.* for callers of the raw ops
            torch = _torch()
            dev = torch.device("cuda", self.device) if self.is_gpu else torch.device("cpu")
            t = self._tokens[slot] = torch.zeros(1, dtype=torch.int32, device=dev)
        return t

    def views(self, slot: int) -> Views:
        """Zero-copy tensors over the slot's workspace (see Views). GPU groups: any time. Host groups:
        between the slot's dispatch_wait and its combine_wait (the host API hands out the addresses
        then), else EpdError NO_DISPATCH; the tensors stay usable afterwards (addresses are fixed)."""
        h = self._live()
        self._check_slot(slot)
        return self._gpu_views(h, slot) if self.is_gpu else self._host_views(h, slot)

    def _shapes(self):
        s = self.spec
        dt = DType(s["dtype"])
        fp8 = Quant(s["dispatch_quant"]) == Quant.FP8_E4M3_BLOCK128
        per_expert = self.world_size * s["max_tokens_per_rank"] if s["layout"] == Layout.EXPERT_MAJOR else 0
        return s["hidden"], dt, fp8, per_expert

    def _make(self, torch, raw, r, total, on_device):
        hidden, dt, fp8, per_expert = self._shapes()
        cap, ipr, nle = int(r.capacity_rows), int(r.ids_per_row), int(r.num_local_experts)
        mt, top_k = self.spec["max_tokens_per_rank"], self.spec["top_k"]
        tdt = _torch_dtype(torch, dt)
        esz = torch.empty((), dtype=tdt).element_size()

        def t(addr, rows, cols, dtype, elem):
            if not addr:
                return None
            shape = (rows, cols) if cols is not None else (rows,)
            n = rows * (cols or 1) * elem
            return raw(addr, n).view(dtype).view(shape)
        rx_dtype = torch.float8_e4m3fn if fp8 else tdt
        g = (lambda name: getattr(r, name, None)) if on_device else (lambda name: None)
        return Views(
            recv_x=t(r.recv_x if on_device else r.x, cap, hidden, rx_dtype, 1 if fp8 else esz),
            recv_scales=t(r.recv_scales if on_device else r.scales, cap, hidden // _FP8_BLOCK, torch.float32, 4)
            if fp8 else None,
            recv_ids=t(r.recv_ids if on_device else r.ids, cap, ipr, torch.int32, 4),
            recv_weights=t(r.recv_weights if on_device else r.weights, cap, ipr, torch.float32, 4),
            recv_src=t(r.recv_src if on_device else r.src, cap, 2, torch.int32, 4),
            recv_counts=t(r.recv_counts if on_device else r.counts, nle, None, torch.int32, 4),
            recv_total=t(g("recv_total"), 1, None, torch.int32, 4),
            combine_in=t(r.combine_in, cap, hidden, tdt, esz),
            combine_out=t(g("combine_out"), mt, hidden, tdt, esz),
            send_x=t(g("send_x"), mt, hidden, tdt, esz),
            send_ids=t(g("send_ids"), mt, top_k, torch.int32, 4),
            send_weights=t(g("send_weights"), mt, top_k, torch.float32, 4),
            capacity_rows=cap, ids_per_row=ipr, num_local_experts=nle, rows_per_expert=per_expert,
            total_rows=total)

    def _gpu_views(self, h, slot):
        v = self._views.get(slot)
        if v is not None:
            return v
        torch = _torch()
        r = _lib.GpuViews()
        r.struct_size = ctypes.sizeof(r)
        _lib.check_group(_lib.load().epd_group_gpu_views(h, int(slot), ctypes.byref(r)), h)
        dev = int(r.device)
        v = self._views[slot] = self._make(torch, lambda a, n: _device_bytes(torch, a, n, dev), r, None, True)
        return v

    def _host_views(self, h, slot):
        torch = _torch()
        r = _lib.DispatchResult()
        r.struct_size = ctypes.sizeof(r)
        rc = _lib.load().epd_group_dispatch_wait(h, int(slot), 1, ctypes.byref(r))
        if rc != 0:
            raise EpdError(rc, f"views of host group slot {slot} exist between its dispatch_wait and its "
                               f"combine_wait: {_lib.group_error(h)}")
        cached = self._views.get(slot)
        if cached is not None and cached.recv_ids.data_ptr() == r.ids:
            cached.total_rows = int(r.total_rows)
            return cached
        v = self._views[slot] = self._make(torch, lambda a, n: _host_bytes(torch, a, n), r, int(r.total_rows),
                                           False)
        return v

    def status(self, slot: int | None = None, timeout_ms: int = 0) -> Status:
        """GPU groups: the status of the last operation enqueued on `slot` (every slot when None) after
        waiting at most timeout_ms for it (epd_group_gpu_status; host only, never during CUDA graph
        capture); raises EpdError for a failed one (a bad expert id names rank, token, k and value;
        PEER_LOST, SHUTTING_DOWN, TIMEOUT when it has not completed). Host groups: their calls report
        errors themselves, so this only checks that the group is joined. Returns Status.OK."""
        h = self._live()
        if not self.is_gpu:
            return Status.OK
        for s in ([slot] if slot is not None else range(self.slots)):
            self._check_slot(s)
            _lib.check_group(_lib.load().epd_group_gpu_status(h, int(s), int(timeout_ms)), h)
        return Status.OK

    def leave(self) -> None:
        """Leaves the group (epd_group_leave); the other ranks see this rank go. Idempotent."""
        h, self._handle = self._handle, None
        self._views.clear()
        if h:
            rc = _lib.load().epd_group_leave(h)
            if rc != 0:
                raise EpdError(rc, _lib.status_string(rc))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.leave()

    def __repr__(self):
        where = f"cuda:{self.device}" if self.is_gpu else "host"
        return (f"epd.Group(name={self.spec['name']!r}, rank={self.rank}/{self.world_size}, {where}, "
                f"handle={self.handle:#x})")
