"""The group spec as keyword arguments: enums, defaults and the ctypes struct.

`build_spec(**fields)` starts from the C defaults (epd_group_spec_init), sets
the given fields, and returns the struct plus the arrays it points to (kept
alive by the caller for as long as the struct is used). Validation is the C
library's (epd_group_spec_validate), so the messages are the ones the daemon
would give. Plain functions: thread-safe.
"""
from __future__ import annotations

import ctypes
import enum

from . import _lib
from ._status import EpdError, Status


class DType(enum.IntEnum):
    """epd_dtype_t: the activation dtype."""
    BF16 = 0
    FP16 = 1
    FP32 = 2


class Quant(enum.IntEnum):
    """epd_quant_t: the dispatch payload format."""
    NONE = 0
    FP8_E4M3_BLOCK128 = 1


class Mode(enum.IntEnum):
    HIGH_THROUGHPUT = 0
    LOW_LATENCY = 1


class Layout(enum.IntEnum):
    RANK_MAJOR = 0
    EXPERT_MAJOR = 1


class Executor(enum.IntEnum):
    """epd_executor_t: who launches a GPU group's kernels."""
    DAEMON = 0
    INLINE = 1


class WeightMode(enum.IntEnum):
    """epd_weight_mode_t: what combine does with the router weights."""
    APPLY = 0
    ALREADY_APPLIED = 1
    ONES = 2


class Capability(enum.IntFlag):
    """EPD_CAP_* bits of Client.info.capabilities."""
    HOST_EXECUTOR = 1 << 0
    RANK_MAJOR = 1 << 1
    EXPERT_MAJOR = 1 << 2
    FP8_DISPATCH = 1 << 3
    GPU_EXECUTOR = 1 << 4


GPU_HOST = _lib.GPU_HOST
FIELDS = ("name", "generation", "world_size", "rank", "placement", "num_experts", "top_k", "expert_owner",
          "hidden", "dtype", "dispatch_quant", "max_tokens_per_rank", "mode", "layout", "slots", "timeout_ms",
          "sm_budget", "executor")
_ENUM_FIELDS = {"dtype": DType, "dispatch_quant": Quant, "mode": Mode, "layout": Layout, "executor": Executor}
_TORCH_DTYPES = {"torch.bfloat16": DType.BF16, "torch.float16": DType.FP16, "torch.half": DType.FP16,
                 "torch.float32": DType.FP32, "torch.float": DType.FP32}


def enum_value(cls, field: str, value):
    """`value` (an enum member, its int, its name in any case, or for dtype a torch dtype) as `cls`."""
    if isinstance(value, cls):
        return value
    if field == "dtype" and str(value) in _TORCH_DTYPES:
        return _TORCH_DTYPES[str(value)]
    if isinstance(value, str):
        key = value.strip().upper().replace("-", "_")
        aliases = {"FP8": "FP8_E4M3_BLOCK128", "BFLOAT16": "BF16", "FLOAT16": "FP16", "FLOAT32": "FP32"}
        key = aliases.get(key, key)
        if key in cls.__members__:
            return cls[key]
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return cls(value)
        except ValueError:
            pass
    names = ", ".join(m.name.lower() for m in cls)
    raise EpdError(Status.INVALID_SPEC, f"{field} = {value!r} is not one of {names}")


def defaults() -> dict:
    """The C defaults (epd_group_spec_init) as a dict of Python values."""
    s = _lib.GroupSpec()
    _lib.load().epd_group_spec_init(ctypes.byref(s))
    d = {f: getattr(s, f) for f in FIELDS if f not in ("placement", "expert_owner", "name")}
    d.update(name=s.name.decode(), placement=None, expert_owner=None)
    for f, cls in _ENUM_FIELDS.items():
        d[f] = cls(d[f])
    return d


def _set_name(s, name):
    raw = str(name).encode()
    if len(raw) >= _lib.NAME_MAX:
        raise EpdError(Status.INVALID_SPEC, f"name = '{name}' is {len(raw)} bytes; at most {_lib.NAME_MAX - 1}")
    s.name = raw


def _placement_array(value):
    rows = []
    for i, p in enumerate(value):
        node, gpu = (p.node, p.gpu) if isinstance(p, _lib.Placement) else tuple(p)
        rows.append(_lib.Placement(int(node), int(gpu)))
    return (_lib.Placement * len(rows))(*rows)


def build_spec(fields: dict):
    """(GroupSpec, keepalive) for `fields`; unknown names raise TypeError naming them."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise TypeError(f"unknown group spec field(s): {', '.join(unknown)}; the fields are {', '.join(FIELDS)}")
    s = _lib.GroupSpec()
    _lib.load().epd_group_spec_init(ctypes.byref(s))
    keep = []
    for f, v in fields.items():
        if f == "name":
            _set_name(s, v)
        elif f == "placement":
            if v is not None:
                arr = _placement_array(v)
                keep.append(arr)
                if len(arr) != fields.get("world_size", s.world_size):
                    raise EpdError(Status.INVALID_SPEC, f"placement has {len(arr)} entries; world_size = "
                                   f"{fields.get('world_size', s.world_size)} needs one per rank")
                s.placement = ctypes.cast(arr, ctypes.POINTER(_lib.Placement))
        elif f == "expert_owner":
            if v is not None:
                arr = (ctypes.c_int32 * len(v))(*[int(e) for e in v])
                keep.append(arr)
                if len(arr) != fields.get("num_experts", s.num_experts):
                    raise EpdError(Status.INVALID_SPEC, f"expert_owner has {len(arr)} entries; num_experts = "
                                   f"{fields.get('num_experts', s.num_experts)} needs one per expert")
                s.expert_owner = ctypes.cast(arr, ctypes.POINTER(ctypes.c_int32))
        elif f in _ENUM_FIELDS:
            setattr(s, f, int(enum_value(_ENUM_FIELDS[f], f, v)))
        else:
            _set_int(s, f, v)
    return s, keep


def _set_int(s, field, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise EpdError(Status.INVALID_SPEC, f"{field} = {value!r} is not an integer")
    ctype = dict(_lib.GroupSpec._fields_)[field]
    lo, hi = {ctypes.c_int32: (-2**31, 2**31 - 1), ctypes.c_uint32: (0, 2**32 - 1),
              ctypes.c_uint64: (0, 2**64 - 1)}[ctype]
    if not lo <= value <= hi:
        raise EpdError(Status.INVALID_SPEC, f"{field} = {value} does not fit its C type (range [{lo}, {hi}])")
    setattr(s, field, value)


def validate(spec) -> None:
    """Raises EpdError (INVALID_SPEC, FP8_ALIGNMENT, ...) with the library's message naming the field."""
    buf = ctypes.create_string_buffer(512)
    rc = _lib.load().epd_group_spec_validate(ctypes.byref(spec), buf, len(buf))
    if rc != 0:
        raise EpdError(rc, buf.value.decode(errors="replace") or _lib.status_string(rc))


def as_dict(spec) -> dict:
    """The struct's scalar fields as Python values (placement/expert_owner as lists)."""
    d = {f: getattr(spec, f) for f in FIELDS if f not in ("placement", "expert_owner", "name")}
    d["name"] = spec.name.decode()
    for f, cls in _ENUM_FIELDS.items():
        d[f] = cls(d[f])
    d["placement"] = ([(spec.placement[i].node, spec.placement[i].gpu) for i in range(spec.world_size)]
                      if spec.placement else None)
    d["expert_owner"] = ([spec.expert_owner[i] for i in range(spec.num_experts)] if spec.expert_owner else None)
    return d


def workspace_bytes(node=None, gpu=None, **fields) -> int:
    """Exact bytes the group's workspace takes on (node, gpu) before anything is allocated
    (epd_group_spec_workspace_bytes). node/gpu default to the placement of `rank`
    (node 0, host when placement is None); gpu=GPU_HOST (-1) asks for host memory."""
    spec, keep = build_spec(fields)
    validate(spec)
    if node is None or gpu is None:
        p_node, p_gpu = (0, GPU_HOST)
        if spec.placement and 0 <= spec.rank < spec.world_size:
            p_node, p_gpu = spec.placement[spec.rank].node, spec.placement[spec.rank].gpu
        node = p_node if node is None else node
        gpu = p_gpu if gpu is None else gpu
    out = ctypes.c_uint64(0)
    rc = _lib.load().epd_group_spec_workspace_bytes(ctypes.byref(spec), int(node), int(gpu), ctypes.byref(out))
    _lib.check_client(rc, None)
    del keep
    return out.value
