"""The epd all2all manager for vLLM, and the factory of epd prepare/finalize objects.

EpdAll2AllManager is made once per worker, when vLLM builds the EP group's
device communicator (before the model loads and memory is profiled). It
learns every rank's GPU over the EP group's CPU process group, attaches to the
local epd once (epd._link.Link), and hands the Link out as its handle. It
keeps the manager vLLM made for the configured --all2all-backend as `inner`
and forwards to it whatever it does not do itself (e.g. the naive
dispatch/combine of layers that do not use a modular kernel).

daemon_bytes() tells what the daemon holds on this GPU for the MoE layer
shapes seen so far; it is logged as a warning at the first handle so the
engine's memory share (--gpu-memory-utilization) can be lowered by it.

Thread-safety: made and used on the worker's main thread; the Link is
thread-safe for group joins.
"""
from __future__ import annotations

import logging
import os

import torch

import epd
from ._link import LayerShape, Link
from ._names import ENV_BACKEND, selected_backend  # noqa: F401 (re-exported)
from .prepare_finalize import EpdExpertMajorPrepareAndFinalize, EpdRankMajorPrepareAndFinalize

logger = logging.getLogger("epd.vllm")

ENV_MAX_TOKENS = "VLLM_EPD_MAX_TOKENS_PER_RANK"
BACKENDS = {
    "epd_high_throughput": EpdRankMajorPrepareAndFinalize,
    "epd_low_latency": EpdExpertMajorPrepareAndFinalize,
}


def _placements(cpu_group, device: torch.device | None) -> list | None:
    """Every rank's (node, gpu) gathered over the EP CPU group; None when the workers run on the host."""
    import socket

    import torch.distributed as dist
    mine = (socket.gethostname(), device.index if device is not None and device.type == "cuda" else -1)
    everyone = [None] * dist.get_world_size(cpu_group)
    dist.all_gather_object(everyone, mine, group=cpu_group)
    hosts = {h: i for i, h in enumerate(dict.fromkeys(h for h, _ in everyone))}
    if all(g < 0 for _, g in everyone):
        return None
    if any(g < 0 for _, g in everyone):
        raise epd.EpdError(epd.Status.INVALID_SPEC, f"some EP ranks are on a GPU and some are not: {everyone}")
    return [(hosts[h], g) for h, g in everyone]


try:
    from vllm.distributed.device_communicators.base_device_communicator import All2AllManagerBase
except ImportError:  # pragma: no cover - checked by the plugin, which needs vLLM anyway
    All2AllManagerBase = object


class EpdAll2AllManager(All2AllManagerBase):
    """vLLM's all2all manager for epd: one Link per worker, the backend name, the inner manager."""

    def __init__(self, cpu_group, tcp_store_group=None, *, backend: str, device=None, inner=None,
                 placement="gather"):
        super().__init__(cpu_group, tcp_store_group)
        self.backend = backend
        self.inner = inner
        self.placement = _placements(cpu_group, device) if placement == "gather" else placement
        self.link = Link.attach(self.rank, self.placement)
        self._reported: set = set()
        logger.info("epd: worker rank %d of %d attached to epd (backend %s, %s)", self.rank, self.world_size,
                    backend, "host" if self.placement is None else f"GPU placement {self.placement}")

    def __getattr__(self, name):
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def get_handle(self, kwargs):
        return self.link

    def report(self, shape: LayerShape) -> int:
        """Logs (once per shape) the bytes the daemon holds for `shape` on this GPU; returns them."""
        nbytes = self.link.workspace_bytes(shape)
        if shape not in self._reported:
            self._reported.add(shape)
            logger.warning("epd holds %d bytes (%.1f MiB) on this rank's %s for MoE layers of hidden %d (%s): "
                           "lower vLLM's --gpu-memory-utilization by that share of the GPU", nbytes,
                           nbytes / 2**20, "host" if self.placement is None else "GPU", shape.hidden, shape.layout)
        return nbytes

    def daemon_bytes(self) -> int:
        return sum(self.link.workspace_bytes(s) for s in self._reported)

    def destroy(self):
        Link.detach()
        if self.inner is not None:
            self.inner.destroy()


def expert_owner_for(moe) -> list | None:
    """vLLM's expert placement as epd's expert_owner (None = linear, which is epd's default)."""
    pc = moe.moe_parallel_config
    strategy = getattr(pc, "expert_placement_strategy", None) or "linear"
    if strategy == "linear":
        return None
    if strategy == "round_robin":
        return [e % pc.ep_size for e in range(moe.num_experts)]
    raise epd.EpdError(epd.Status.UNSUPPORTED, f"expert placement strategy {strategy!r} has no epd mapping")


def make_prepare_finalize(manager: EpdAll2AllManager, moe, quant_config):
    """The epd prepare/finalize for one MoE layer configuration (vLLM's FusedMoEConfig)."""
    cls = BACKENDS[manager.backend]
    max_tokens = int(os.environ.get(ENV_MAX_TOKENS) or moe.max_num_tokens)
    pf = cls(manager.link, world_size=manager.world_size, rank=manager.rank, num_experts=moe.num_experts,
             top_k=moe.experts_per_token, max_tokens_per_rank=max_tokens,
             num_local_experts=moe.num_local_experts, expert_owner=expert_owner_for(moe))
    dtype = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(moe.in_dtype, "bf16")
    from .prepare_finalize import dispatch_quant_for
    try:
        quant = dispatch_quant_for(quant_config, False, moe.hidden_dim)
    except epd.EpdError:
        quant = "none"
    shape = LayerShape(world_size=manager.world_size, num_experts=moe.num_experts, top_k=moe.experts_per_token,
                       hidden=moe.hidden_dim, dtype=dtype, dispatch_quant=quant, max_tokens_per_rank=max_tokens,
                       layout=cls.LAYOUT, mode=cls.MODE, expert_owner=pf.expert_owner)
    manager.report(shape)
    return pf
