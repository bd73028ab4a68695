"""The engine-neutral part of the vLLM and SGLang backends: one epd client per
worker process, one joined group per MoE layer configuration, and the slot
bookkeeping a prepare/dispatch and its finalize/combine share.

Ownership: the process-wide Link owns the epd.Client and every Group it joined;
Link.close() leaves them. A LayerComm is a cheap per-(layer configuration)
object that borrows one Group from the Link. Thread-safety: Link.group() takes a
lock (micro-batch threads may race on the first call); a LayerComm's slot s is
driven by one thread at a time (vLLM's and SGLang's micro-batches each own one
slot), as libepd-client requires. This module imports neither vLLM nor SGLang.
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field

import epd

ENV_SOCKET = "EPD_SOCKET"
ENV_GROUP_PREFIX = "EPD_ENGINE_GROUP"  # group-name prefix; distinct per serving job on one node
ENV_GENERATION = "EPD_ENGINE_GENERATION"
ENV_TIMEOUT_MS = "EPD_ENGINE_TIMEOUT_MS"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise epd.EpdError(epd.Status.INVALID_ARGUMENT, f"{name} = {raw!r} is not an integer") from None


@dataclass(frozen=True)
class LayerShape:
    """What makes two MoE layers share one epd group (every rank computes the same one)."""
    world_size: int
    num_experts: int
    top_k: int
    hidden: int
    dtype: str                 # 'bf16', 'fp16', 'fp32'
    dispatch_quant: str        # 'none' or 'fp8_e4m3_block128'
    max_tokens_per_rank: int
    layout: str                # 'rank_major' or 'expert_major'
    mode: str                  # 'high_throughput' or 'low_latency'
    expert_owner: tuple | None = None
    slots: int = 2

    def group_name(self, prefix: str) -> str:
        """A name every rank derives alike: the prefix plus a digest of the shape (<= 63 chars)."""
        digest = hashlib.sha1(repr(self).encode()).hexdigest()[:12]
        short = "rm" if self.layout == "rank_major" else "em"
        return f"{prefix[:40]}.{short}.{self.hidden}.{digest}"


@dataclass
class SlotState:
    """What a slot's dispatch hands to its combine (never the ids the engine passes again)."""
    n_tokens: int = 0
    weight_mode: str = "already_applied"
    views: object = None
    dispatched: bool = False
    waited: bool = False


class Link:
    """This process's attachment to the local epd: one client, groups cached by LayerShape."""

    _instance: "Link | None" = None
    _instance_lock = threading.Lock()

    def __init__(self, socket_path: str | None, rank: int, placement: list | None):
        self.client = epd.connect(socket_path)
        self.rank = rank
        self.placement = placement
        self.prefix = os.environ.get(ENV_GROUP_PREFIX, "engine")
        self.generation = _env_int(ENV_GENERATION, 0)
        self.timeout_ms = _env_int(ENV_TIMEOUT_MS, 0)
        self._groups: dict[LayerShape, epd.Group] = {}
        self._lock = threading.Lock()

    @classmethod
    def attach(cls, rank: int, placement: list | None, socket_path: str | None = None) -> "Link":
        """The process-wide Link (made on the first call; later calls must agree on rank)."""
        with cls._instance_lock:
            link = cls._instance
            if link is None:
                link = cls._instance = Link(socket_path or os.environ.get(ENV_SOCKET), rank, placement)
            elif link.rank != rank:
                raise epd.EpdError(epd.Status.INVALID_ARGUMENT,
                                   f"this process is attached to epd as rank {link.rank}; asked for rank {rank}")
            return link

    @classmethod
    def detach(cls) -> None:
        with cls._instance_lock:
            link, cls._instance = cls._instance, None
        if link is not None:
            link.close()

    def spec(self, shape: LayerShape) -> dict:
        s = dict(name=shape.group_name(self.prefix), generation=self.generation, world_size=shape.world_size,
                 rank=self.rank, placement=self.placement, num_experts=shape.num_experts, top_k=shape.top_k,
                 hidden=shape.hidden, dtype=shape.dtype, dispatch_quant=shape.dispatch_quant,
                 max_tokens_per_rank=shape.max_tokens_per_rank, mode=shape.mode, layout=shape.layout,
                 slots=shape.slots, timeout_ms=self.timeout_ms)
        if shape.expert_owner is not None:
            s["expert_owner"] = list(shape.expert_owner)
        return s

    def workspace_bytes(self, shape: LayerShape) -> int:
        """Bytes the daemon holds for this rank's node and GPU (host: node memory) for `shape`."""
        node, gpu = self.placement[self.rank] if self.placement else (0, epd.GPU_HOST)
        fields = self.spec(shape)
        return epd.workspace_bytes(node=node, gpu=gpu, **fields)

    def group(self, shape: LayerShape) -> epd.Group:
        """The group of `shape`, joined on first use (blocks until every rank joined)."""
        with self._lock:
            g = self._groups.get(shape)
            if g is None:
                g = self._groups[shape] = self.client.join(**self.spec(shape))
            return g

    def groups(self) -> list:
        with self._lock:
            return list(self._groups.values())

    def close(self) -> None:
        with self._lock:
            groups, self._groups = list(self._groups.values()), {}
        for g in groups:
            g.leave()
        self.client.close()


@dataclass
class LayerComm:
    """One layer configuration's use of its group: dispatch/combine per slot with the state between."""
    link: Link
    shape: LayerShape
    _group: epd.Group | None = None
    _slots: dict = field(default_factory=dict)

    @property
    def group(self) -> epd.Group:
        if self._group is None:
            self._group = self.link.group(self.shape)  # Link.group is locked and cached: races agree
        return self._group

    def state(self, slot: int) -> SlotState:
        if not 0 <= slot < self.shape.slots:
            raise epd.EpdError(epd.Status.BAD_SLOT,
                               f"micro-batch {slot} has no epd slot: the group has {self.shape.slots} slots")
        return self._slots.setdefault(slot, SlotState())  # atomic: two micro-batch threads may race

    def dispatch(self, slot, x, topk_ids, topk_weights, weight_mode: str) -> None:
        st = self.state(slot)
        st.n_tokens, st.weight_mode, st.views = int(x.shape[0]), weight_mode, None
        st.dispatched, st.waited = True, False
        epd.dispatch(self.group, slot, x, topk_ids, topk_weights, n_tokens=st.n_tokens)

    def dispatch_wait(self, slot):
        """The slot's views (waits once; a second call returns the same views)."""
        st = self.state(slot)
        if not st.dispatched:
            raise epd.EpdError(epd.Status.NO_DISPATCH, f"dispatch_wait on slot {slot} without a dispatch")
        if not st.waited:
            st.views = epd.dispatch_wait(self.group, slot)
            st.waited = True
        return st.views

    def views(self, slot):
        return self.dispatch_wait(slot)

    def combine(self, slot, expert_out=None, rows=None, weight_mode: str | None = None) -> None:
        st = self.state(slot)
        if not st.waited:
            raise epd.EpdError(epd.Status.NO_DISPATCH, f"combine on slot {slot} before its dispatch_wait")
        epd.combine(self.group, slot, weight_mode or st.weight_mode, expert_out, rows)

    def combine_wait(self, slot, out) -> None:
        """Waits for the slot's combine and writes this rank's n_tokens reduced rows into `out`."""
        st = self.state(slot)
        n = st.n_tokens
        if out.shape[0] != n:
            raise epd.EpdError(epd.Status.INVALID_ARGUMENT,
                               f"combine output has {out.shape[0]} rows; slot {slot} dispatched {n}")
        g = self.group
        if g.is_gpu:
            epd.combine_wait(g, slot)
            if n:
                out.copy_(st.views.combine_out[:n], non_blocking=True)
        else:
            epd.combine_wait(g, slot, out=out)
        st.dispatched = st.waited = False
