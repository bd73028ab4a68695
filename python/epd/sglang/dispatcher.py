"""epd as an SGLang 0.5.23 MoE token dispatcher.

EpdDispatcher implements SGLang's BaseDispatcher with launch/wait halves
(dispatch_a/_b, combine_a/_b) over one epd slot. Its outputs are SGLang's
DeepEP output types, so SGLang's DeepEP-aware runners and models consume them
unchanged:

- normal (layout rank_major): DeepEPNormalDispatchOutput: the received rows
  [rows, hidden], topk_ids [rows, top_k] as LOCAL expert ids (-1 elsewhere),
  weights, and num_recv_tokens_per_expert (a host list: one device read, as
  DeepEP's normal mode does); combine sums rows the experts already weighted.
- low_latency (layout expert_major): DeepEPLLDispatchOutput: [local_experts,
  world_size * max_tokens, hidden] with masked_m = the per-expert counts on
  the device (no host read; graph-capturable on GPU groups); combine applies
  the dispatch-time weights.

EpdTboDispatcher holds one EpdDispatcher per two-batch-overlap sub-batch;
tbo_subbatch_index i runs on epd slot i (the shape of SGLang's
MaybeTboDeepEPDispatcher).

Ownership: dispatchers borrow a LayerComm (and its group) from the
process-wide epd Link. Thread-safety: one sub-batch per dispatcher at a time,
like SGLang's own.
"""
from __future__ import annotations

import torch

import epd
from sglang.srt.layers.moe.token_dispatcher.base import BaseDispatcher
from sglang.srt.layers.moe.token_dispatcher.deepep import (DeepEPLLDispatchOutput, DeepEPNormalDispatchOutput)

from epd.vllm._link import LayerComm, LayerShape, Link

MODES = {"normal": ("rank_major", "high_throughput"), "low_latency": ("expert_major", "low_latency")}
_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


class EpdDispatcher(BaseDispatcher):
    """One slot of epd as an SGLang dispatcher (mode 'normal' or 'low_latency')."""

    def __init__(self, link: Link, *, mode: str, world_size: int, rank: int, num_experts: int,
                 num_local_experts: int, top_k: int, hidden_size: int, params_dtype: torch.dtype,
                 max_tokens_per_rank: int, use_fp8: bool = False, slot: int = 0):
        super().__init__()
        if mode not in MODES:
            raise epd.EpdError(epd.Status.INVALID_ARGUMENT, f"mode = {mode!r} is not one of {', '.join(MODES)}")
        if params_dtype not in _DTYPES:
            raise epd.EpdError(epd.Status.UNSUPPORTED, f"params_dtype = {params_dtype} is not bf16, fp16 or fp32")
        layout, emode = MODES[mode]
        self.mode, self.slot, self.rank, self.world_size = mode, slot, rank, world_size
        self.num_local_experts, self.max_tokens = num_local_experts, max_tokens_per_rank
        base, extra = divmod(num_experts, world_size)  # epd's default owner map, SGLang's placement
        self.first_expert = rank * base + min(rank, extra)
        shape = LayerShape(world_size=world_size, num_experts=num_experts, top_k=top_k, hidden=hidden_size,
                           dtype=_DTYPES[params_dtype], dispatch_quant="fp8_e4m3_block128" if use_fp8 else "none",
                           max_tokens_per_rank=max_tokens_per_rank, layout=layout, mode=emode)
        self.comm = LayerComm(link, shape)

    # ---- dispatch ----
    def dispatch(self, hidden_states: torch.Tensor, topk_output):
        self.dispatch_a(hidden_states, topk_output)
        return self.dispatch_b()

    def dispatch_a(self, hidden_states: torch.Tensor, topk_output):
        ids, weights = topk_output.topk_ids, topk_output.topk_weights
        mode = "already_applied" if self.mode == "normal" else "apply"
        self.comm.dispatch(self.slot, hidden_states.contiguous(), ids.to(torch.int32).contiguous(),
                           weights.to(torch.float32).contiguous(), mode)

    def dispatch_b(self):
        v = self.comm.dispatch_wait(self.slot)
        if self.mode == "normal":
            return self._normal_output(v)
        return self._low_latency_output(v)

    def _normal_output(self, v):
        rows = int(v.total_rows) if v.total_rows is not None else int(v.recv_total.item())
        gids = v.recv_ids[:rows]
        local = torch.where(gids >= 0, gids - self.first_expert, torch.full_like(gids, -1))
        scales = v.recv_scales[:rows] if v.recv_scales is not None else None
        return DeepEPNormalDispatchOutput(hidden_states=v.recv_x[:rows], hidden_states_scale=scales,
                                          topk_ids=local, topk_weights=v.recv_weights[:rows],
                                          num_recv_tokens_per_expert=v.recv_counts.tolist())

    def _batched(self, t):
        return None if t is None else t.view(self.num_local_experts, self.world_size * self.max_tokens, -1)

    def _low_latency_output(self, v):
        return DeepEPLLDispatchOutput(hidden_states=self._batched(v.recv_x),
                                      hidden_states_scale=self._batched(v.recv_scales),
                                      topk_ids=v.recv_ids, topk_weights=v.recv_weights, masked_m=v.recv_counts,
                                      expected_m=self.max_tokens)

    # ---- combine ----
    def combine(self, combine_input) -> torch.Tensor:
        self.combine_a(combine_input)
        return self.combine_b()

    def combine_a(self, combine_input):
        """Stages the experts' output into epd's combine_in (no copy when they wrote there) and rings.
        The ids and weights in combine_input are ignored: combine uses what dispatch captured."""
        v = self.comm.views(self.slot)
        out = combine_input.hidden_states
        if self.mode == "normal":
            dst = v.combine_in[:out.shape[0]]
            mode = "already_applied"
        else:
            dst = self._batched(v.combine_in)
            mode = "apply"
            if tuple(out.shape) != tuple(dst.shape):
                raise epd.EpdError(epd.Status.INVALID_ARGUMENT, f"low-latency expert output {tuple(out.shape)} "
                                                                f"is not epd's combine_in {tuple(dst.shape)}")
        if out.numel() and out.data_ptr() != dst.data_ptr():
            dst.copy_(out)
        self.comm.combine(self.slot, weight_mode=mode)

    def combine_b(self) -> torch.Tensor:
        st = self.comm.state(self.slot)
        g = self.comm.group
        hidden = self.comm.shape.hidden
        dev = torch.device("cuda", g.device) if g.is_gpu else torch.device("cpu")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.comm.shape.dtype]
        out = torch.empty(st.n_tokens, hidden, dtype=dtype, device=dev)
        self.comm.combine_wait(self.slot, out)
        return out


class EpdTboDispatcher(BaseDispatcher):
    """Two-batch overlap: sub-batch i on epd slot i (one inner EpdDispatcher each)."""

    def __init__(self, link: Link, num_subbatches: int, **kwargs):
        super().__init__()
        self._inners = [EpdDispatcher(link, slot=i, **kwargs) for i in range(num_subbatches)]

    def _inner(self, tbo_subbatch_index):
        i = tbo_subbatch_index or 0
        if not 0 <= i < len(self._inners):
            raise epd.EpdError(epd.Status.BAD_SLOT, f"tbo_subbatch_index = {i} is outside [0, {len(self._inners)})")
        return self._inners[i]

    def dispatch(self, tbo_subbatch_index=None, **kwargs):
        return self._inner(tbo_subbatch_index).dispatch(**kwargs)

    def dispatch_a(self, tbo_subbatch_index=None, **kwargs):
        return self._inner(tbo_subbatch_index).dispatch_a(**kwargs)

    def dispatch_b(self, tbo_subbatch_index=None, **kwargs):
        return self._inner(tbo_subbatch_index).dispatch_b(**kwargs)

    def combine(self, tbo_subbatch_index=None, **kwargs):
        return self._inner(tbo_subbatch_index).combine(**kwargs)

    def combine_a(self, tbo_subbatch_index=None, **kwargs):
        return self._inner(tbo_subbatch_index).combine_a(**kwargs)

    def combine_b(self, tbo_subbatch_index=None, **kwargs):
        return self._inner(tbo_subbatch_index).combine_b(**kwargs)
