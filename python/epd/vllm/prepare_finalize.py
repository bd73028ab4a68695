"""vLLM prepare/finalize classes that run dispatch and combine through epd.

EpdRankMajorPrepareAndFinalize (layout rank_major, vLLM's PaddedStandard):
the experts get [capacity_rows, hidden] rows with [rows, top_k] global int32
ids, -1 for other ranks' experts and on padding rows, so no host read of the
row count is needed; the experts apply the weights (or finalize reduces a
[rows, top_k, hidden] output here) and combine sums (already_applied).
EpdExpertMajorPrepareAndFinalize (layout expert_major, vLLM's
BatchedExperts): [local_experts, world_size * max_tokens, hidden] rows with a
device-side count per expert; combine applies the dispatch-time weights.

Both: fp8 e4m3 block-128 dispatch (epd quantizes; scales [.., hidden/128]
fp32) when the experts take block-quantized fp8 inputs, else the activation
dtype; async hook/receiver pairs; the DBO micro-batch id is the epd slot; the
combine uses only what epd captured at dispatch, never the ids finalize is
handed. allocate_fused_expert_output returns epd's combine_in so the experts
write straight into the workspace (vLLM uses it on GPU platforms).

Ownership: an instance borrows its LayerComm's group from the process's Link.
Thread-safety: each micro-batch thread drives its own slot.
"""
from __future__ import annotations

import logging
import threading

import torch

import epd
import vllm.model_executor.layers.fused_moe.modular_kernel as mk
from vllm.model_executor.layers.fused_moe.config import FusedMoEQuantConfig
from vllm.model_executor.layers.fused_moe.topk_weight_and_reduce import (
    TopKWeightAndReduceContiguous, TopKWeightAndReduceDelegate, TopKWeightAndReduceNaiveBatched,
    TopKWeightAndReduceNoOP)

from ._link import LayerComm, LayerShape, Link

logger = logging.getLogger("epd.vllm")

FP8_BLOCK = [128, 128]
_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def current_slot() -> int:
    """The DBO micro-batch id of the calling thread (0 without DBO): the epd slot."""
    try:
        from vllm.v1.worker.ubatching import dbo_current_ubatch_id
    except ImportError:  # pragma: no cover - vLLM without DBO
        return 0
    return int(dbo_current_ubatch_id())


def dispatch_quant_for(quant_config: FusedMoEQuantConfig | None, defer_input_quant: bool, hidden: int) -> str:
    """'fp8_e4m3_block128' when the experts take block-128 fp8 inputs, 'none' when they take the
    activation dtype; any other input quantization is refused, naming it."""
    if quant_config is None or quant_config.quant_dtype is None or defer_input_quant:
        return "none"
    fp8 = quant_config.quant_dtype == torch.float8_e4m3fn
    if fp8 and quant_config.block_shape == FP8_BLOCK and quant_config.a1_scale is None:
        if hidden % 128:
            raise epd.EpdError(epd.Status.FP8_ALIGNMENT, f"fp8 block-128 dispatch needs hidden % 128 == 0; "
                                                         f"hidden = {hidden}")
        return "fp8_e4m3_block128"
    raise epd.EpdError(epd.Status.UNSUPPORTED,
                       f"epd dispatches bf16/fp16 or fp8 e4m3 with dynamic 1x128 block scales; the experts "
                       f"want quant_dtype = {quant_config.quant_dtype}, block_shape = {quant_config.block_shape}, "
                       f"static a1_scale = {quant_config.a1_scale is not None}")


class _EpdPrepareAndFinalize(mk.FusedMoEPrepareAndFinalizeModular):
    LAYOUT = ""
    MODE = ""

    def __init__(self, link: Link, *, world_size: int, rank: int, num_experts: int, top_k: int,
                 max_tokens_per_rank: int, num_local_experts: int, expert_owner=None):
        super().__init__()
        self.link = link
        self.world_size, self.rank = world_size, rank
        self.num_experts, self.top_k = num_experts, top_k
        self.max_tokens = max_tokens_per_rank
        self.num_local_experts = num_local_experts
        self.expert_owner = tuple(expert_owner) if expert_owner is not None else None
        self._comms: dict[LayerShape, LayerComm] = {}
        self._comms_lock = threading.Lock()  # micro-batch threads meet at the first prepare
        self._experts_want_unquantized = False

    # ---- what vLLM asks of a prepare/finalize ----
    def topk_indices_dtype(self) -> torch.dtype | None:
        return torch.int32

    def max_num_tokens_per_rank(self) -> int | None:
        return self.max_tokens

    def num_dispatchers(self) -> int:
        return self.world_size

    def output_is_reduced(self) -> bool:
        return True

    def supports_async(self) -> bool:
        return True

    def post_init_setup(self, fused_experts) -> None:
        self._experts_want_unquantized = bool(getattr(fused_experts, "expects_unquantized_inputs", False))
        fmt = fused_experts.activation_format()
        if not fmt.is_superset(self.activation_format):
            logger.warning(
                "epd %s backend: the experts %s take the %s activation format, which cannot consume epd's "
                "%s output; vLLM will refuse this kernel. Pick the other epd backend (VLLM_EPD_BACKEND=%s) "
                "or experts of the %s format.", self.LAYOUT, type(fused_experts).__name__, fmt.name,
                self.activation_format.name, "epd_low_latency" if self.LAYOUT == "rank_major" else
                "epd_high_throughput", self.activation_format.name)

    # ---- shared mechanics ----
    def comm_for(self, a1: torch.Tensor, quant: str) -> LayerComm:
        dtype = _DTYPES.get(a1.dtype)
        if dtype is None:
            raise epd.EpdError(epd.Status.UNSUPPORTED, f"epd moves bf16, fp16 or fp32 activations; got {a1.dtype}")
        shape = LayerShape(world_size=self.world_size, num_experts=self.num_experts, top_k=self.top_k,
                           hidden=int(a1.shape[-1]), dtype=dtype, dispatch_quant=quant,
                           max_tokens_per_rank=self.max_tokens, layout=self.LAYOUT, mode=self.MODE,
                           expert_owner=self.expert_owner)
        with self._comms_lock:
            comm = self._comms.get(shape)
            if comm is None:
                comm = self._comms[shape] = LayerComm(self.link, shape)
            return comm

    def _launch(self, a1, topk_weights, topk_ids, apply_router_weight_on_input, quant_config, defer_input_quant):
        if a1.dim() != 2 or topk_ids.dim() != 2 or topk_ids.shape[0] != a1.shape[0]:
            raise epd.EpdError(epd.Status.INVALID_ARGUMENT,
                               f"prepare wants a1 [n, hidden] and topk_ids [n, top_k]; got {tuple(a1.shape)} "
                               f"and {tuple(topk_ids.shape)}")
        quant = dispatch_quant_for(quant_config, defer_input_quant or self._experts_want_unquantized,
                                   int(a1.shape[-1]))
        comm = self.comm_for(a1, quant)
        weights = topk_weights.to(torch.float32)
        if apply_router_weight_on_input:
            if topk_ids.shape[1] != 1:
                raise epd.EpdError(epd.Status.UNSUPPORTED, f"apply_router_weight_on_input needs top_k = 1; "
                                                           f"top_k = {topk_ids.shape[1]}")
            a1 = a1 * weights.to(a1.dtype)
        mode = "ones" if apply_router_weight_on_input else self.weight_mode()
        slot = current_slot()
        comm.dispatch(slot, a1.contiguous(), topk_ids.to(torch.int32).contiguous(), weights.contiguous(), mode)
        return comm, slot

    def weight_mode(self) -> str:
        raise NotImplementedError

    def prepare_async(self, a1, topk_weights, topk_ids, num_experts, expert_map, apply_router_weight_on_input,
                      quant_config, defer_input_quant=False):
        if num_experts != self.num_experts:
            raise epd.EpdError(epd.Status.INVALID_ARGUMENT,
                               f"num_experts = {num_experts}; this backend was made for {self.num_experts}")
        comm, slot = self._launch(a1, topk_weights, topk_ids, apply_router_weight_on_input, quant_config,
                                  defer_input_quant)

        def hook():
            comm.dispatch_wait(slot)

        def receiver():
            return self.received(comm, slot, comm.dispatch_wait(slot))
        return hook, receiver

    def prepare(self, a1, topk_weights, topk_ids, num_experts, expert_map, apply_router_weight_on_input,
                quant_config, defer_input_quant=False):
        hook, receiver = self.prepare_async(a1, topk_weights, topk_ids, num_experts, expert_map,
                                            apply_router_weight_on_input, quant_config, defer_input_quant)
        hook()
        return receiver()

    def received(self, comm: LayerComm, slot: int, views):
        raise NotImplementedError

    def _slot_comm(self) -> tuple[LayerComm, int]:
        slot = current_slot()
        with self._comms_lock:
            comms = list(self._comms.values())
        for comm in comms:
            st = comm._slots.get(slot)
            if st is not None and st.waited:
                return comm, slot
        raise epd.EpdError(epd.Status.NO_DISPATCH, f"finalize on micro-batch {slot} without a prepare")

    def allocate_fused_expert_output(self, shape, dtype, device, weight_and_reduce_impl):
        """epd's combine_in when the experts' output is exactly what combine reads (GPU groups)."""
        try:
            comm, slot = self._slot_comm()
        except epd.EpdError:
            return None
        if not comm.group.is_gpu or not self.writes_combine_in_directly(weight_and_reduce_impl):
            return None
        target = self.combine_target(comm.views(slot))
        if tuple(target.shape) != tuple(shape) or target.dtype != dtype or target.device != torch.device(device):
            return None
        return target

    def writes_combine_in_directly(self, impl) -> bool:
        raise NotImplementedError

    def combine_target(self, views) -> torch.Tensor:
        raise NotImplementedError

    def finalize_async(self, output, fused_expert_output, topk_weights, topk_ids, apply_router_weight_on_input,
                       weight_and_reduce_impl):
        comm, slot = self._slot_comm()
        views = comm.views(slot)
        mode = self.stage_expert_output(views, fused_expert_output, apply_router_weight_on_input,
                                        weight_and_reduce_impl)
        comm.combine(slot, weight_mode=mode if not apply_router_weight_on_input else "ones")

        def hook():
            pass  # the combine's wait is what produces `output`; it runs in the receiver

        def receiver():
            comm.combine_wait(slot, output)
        return hook, receiver

    def finalize(self, output, fused_expert_output, topk_weights, topk_ids, apply_router_weight_on_input,
                 weight_and_reduce_impl) -> None:
        hook, receiver = self.finalize_async(output, fused_expert_output, topk_weights, topk_ids,
                                             apply_router_weight_on_input, weight_and_reduce_impl)
        hook()
        receiver()

    def stage_expert_output(self, views, fused, apply_router_weight_on_input, impl) -> str:
        raise NotImplementedError


class EpdRankMajorPrepareAndFinalize(_EpdPrepareAndFinalize):
    """rank_major through epd, vLLM's PaddedStandard format (backend name epd_high_throughput)."""
    LAYOUT = "rank_major"
    MODE = "high_throughput"

    @property
    def activation_format(self) -> mk.FusedMoEActivationFormat:
        return mk.FusedMoEActivationFormat.PaddedStandard

    def weight_mode(self) -> str:
        return "already_applied"

    def received(self, comm, slot, v):
        rows = v.capacity_rows
        if not comm.group.is_gpu:
            rows = int(v.total_rows)  # host groups know it without a device read: skip the padding
        counts = v.recv_counts
        total = v.recv_total if v.recv_total is not None else torch.tensor([rows], dtype=torch.int32)
        meta = mk.ExpertTokensMetadata(expert_num_tokens=counts, expert_num_tokens_cpu=None,
                                       psum_recv_per_rank=total)
        scales = v.recv_scales[:rows] if v.recv_scales is not None else None
        return v.recv_x[:rows], scales, meta, v.recv_ids[:rows], v.recv_weights[:rows]

    def writes_combine_in_directly(self, impl) -> bool:
        return isinstance(impl, TopKWeightAndReduceNoOP)

    def combine_target(self, views) -> torch.Tensor:
        return views.combine_in

    def stage_expert_output(self, views, fused, apply_router_weight_on_input, impl) -> str:
        rows = fused.shape[0]
        if rows == 0 or fused.numel() == 0:  # no row reached this rank (vLLM skipped the experts)
            return "already_applied"
        dst = views.combine_in[:rows]
        if isinstance(impl, TopKWeightAndReduceNoOP) or fused.dim() == 2 and fused.shape[-1] == dst.shape[-1] \
                and not isinstance(impl, (TopKWeightAndReduceDelegate, TopKWeightAndReduceContiguous)):
            if fused.data_ptr() != dst.data_ptr():
                dst.copy_(fused.view(rows, -1))
            return "already_applied"
        if isinstance(impl, (TopKWeightAndReduceDelegate, TopKWeightAndReduceContiguous)):
            self._reduce_rows(views, fused, rows, dst, apply_router_weight_on_input)
            return "already_applied"
        raise epd.EpdError(epd.Status.UNSUPPORTED,
                           f"the experts' finalize {type(impl).__name__} is not one epd's rank_major combine "
                           f"can follow (NoOP, Delegate or Contiguous)")

    @staticmethod
    def _reduce_rows(views, fused, rows, dst, weights_applied_on_input):
        """[rows, top_k, hidden] expert outputs -> weighted sum per row; slots with id -1 (other ranks'
        experts, padding) count as zero whatever the experts left there."""
        ids = views.recv_ids[:rows]
        top_k = ids.shape[1]
        f = fused.view(rows, top_k, -1).float()
        w = views.recv_weights[:rows].unsqueeze(-1) if not weights_applied_on_input else 1.0
        f = torch.where((ids >= 0).unsqueeze(-1), f * w, torch.zeros((), dtype=f.dtype, device=f.device))
        dst.copy_(f.sum(dim=1).to(dst.dtype))


class EpdExpertMajorPrepareAndFinalize(_EpdPrepareAndFinalize):
    """expert_major through epd, vLLM's BatchedExperts format (backend name epd_low_latency)."""
    LAYOUT = "expert_major"
    MODE = "low_latency"

    @property
    def activation_format(self) -> mk.FusedMoEActivationFormat:
        return mk.FusedMoEActivationFormat.BatchedExperts

    def weight_mode(self) -> str:
        return "apply"

    def _batched(self, t):
        if t is None:
            return None
        return t.view(self.num_local_experts, self.world_size * self.max_tokens, t.shape[-1])

    def received(self, comm, slot, v):
        if v.num_local_experts != self.num_local_experts:
            raise epd.EpdError(epd.Status.SPEC_MISMATCH,
                               f"epd gives rank {self.rank} {v.num_local_experts} local experts; vLLM's layer "
                               f"has {self.num_local_experts}")
        meta = mk.ExpertTokensMetadata(expert_num_tokens=v.recv_counts, expert_num_tokens_cpu=None)
        return self._batched(v.recv_x), self._batched(v.recv_scales), meta, None, None

    def writes_combine_in_directly(self, impl) -> bool:
        return isinstance(impl, (TopKWeightAndReduceDelegate, TopKWeightAndReduceNaiveBatched,
                                 TopKWeightAndReduceNoOP))

    def combine_target(self, views) -> torch.Tensor:
        return self._batched(views.combine_in)

    def stage_expert_output(self, views, fused, apply_router_weight_on_input, impl) -> str:
        if isinstance(impl, TopKWeightAndReduceNoOP):
            mode = "already_applied"  # batched experts that applied the weights themselves
        elif isinstance(impl, (TopKWeightAndReduceDelegate, TopKWeightAndReduceNaiveBatched)):
            mode = "apply"
        else:
            raise epd.EpdError(epd.Status.UNSUPPORTED,
                               f"the experts' finalize {type(impl).__name__} is not one epd's expert_major "
                               f"combine can follow (Delegate, NaiveBatched or NoOP)")
        dst = self._batched(views.combine_in)
        if tuple(fused.shape) != tuple(dst.shape):
            raise epd.EpdError(epd.Status.INVALID_ARGUMENT,
                               f"expert output {tuple(fused.shape)} is not epd's combine_in {tuple(dst.shape)}")
        if fused.data_ptr() != dst.data_ptr():
            dst.copy_(fused)
        return mode
