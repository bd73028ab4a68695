"""epd: Python control plane (ctypes over libepd-client's C ABI) and PyTorch data-plane ops.

    import epd
    with epd.connect("/run/epd/epd.sock") as c:
        g = c.join(name="moe", world_size=4, rank=r, num_experts=16, top_k=2, hidden=1024,
                   max_tokens_per_rank=256, dtype="bf16")
        epd.dispatch(g, 0, x, topk_ids, topk_weights)   # torch.ops.epd.dispatch underneath
        v = epd.dispatch_wait(g, 0)                     # zero-copy views of the received rows
        ...                                             # experts write v.combine_in
        epd.combine(g, 0, "already_applied")
        y = epd.combine_wait(g, 0, out=torch.empty_like(x))
        g.leave()

The control plane needs no build step and no torch; the ops need torch and the
extension libepd_torch_ops.so (epd.ops.available() tells, epd.ops.load_error()
says why not). See python/README.md.
"""
from ._status import EpdError, Status
from ._spec import (GPU_HOST, Capability, DType, Executor, Layout, Mode, Quant, WeightMode, defaults as spec_defaults,
                    workspace_bytes)
from .client import Client, Info, connect
from .group import Group, Views
from . import ops
from .ops import combine, combine_wait, dispatch, dispatch_wait

__version__ = "0.2.0"

__all__ = ["EpdError", "Status", "GPU_HOST", "Capability", "DType", "Executor", "Layout", "Mode", "Quant", "WeightMode",
           "spec_defaults", "workspace_bytes", "Client", "Info", "connect", "Group", "Views", "ops",
           "dispatch", "dispatch_wait", "combine", "combine_wait"]
