"""SGLang general plugin (entry point group `sglang.srt.plugins`, name `epd`).

With SGLANG_EPD_MODE=normal (rank_major) or low_latency (expert_major), and
SGLang started with --moe-a2a-backend deepep (so the model treats the output
as DeepEP's and does not reduce it again), register() puts an AROUND hook on
sglang.srt.layers.moe.fused_moe_triton.layer.create_moe_dispatcher through
SGLang's HookRegistry: every MoE layer then gets an EpdTboDispatcher (one epd
slot per two-batch-overlap sub-batch) instead of a DeepEP one, and DeepEP's
buffers are never made. Unset: nothing is registered.

Capacity per call: SGLANG_EPD_MAX_TOKENS_PER_RANK, else SGLang's
SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK (default 128).
Thread-safety: register() runs in SGLang's single-threaded plugin phase.
"""
from __future__ import annotations

import logging
import os

logger = logging.getLogger("epd.sglang")

ENV_MODE = "SGLANG_EPD_MODE"
ENV_MAX_TOKENS = "SGLANG_EPD_MAX_TOKENS_PER_RANK"
TARGET = "sglang.srt.layers.moe.fused_moe_triton.layer.create_moe_dispatcher"


def selected_mode() -> str | None:
    import epd
    from .dispatcher import MODES
    raw = os.environ.get(ENV_MODE, "").strip()
    if not raw:
        return None
    if raw not in MODES:
        raise epd.EpdError(epd.Status.INVALID_ARGUMENT, f"{ENV_MODE} = {raw!r} is not one of {', '.join(MODES)}")
    return raw


def register() -> None:
    mode = selected_mode()
    if mode is None:
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    HookRegistry.register(TARGET, create_dispatcher_hook, HookType.AROUND)
    logger.info("epd: SGLang plugin active, mode %s", mode)


def _max_tokens() -> int:
    raw = os.environ.get(ENV_MAX_TOKENS) or os.environ.get("SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK") or "128"
    return int(raw)


def create_dispatcher_hook(original, moe_runner_config, quant_method, *args, **kwargs):
    """AROUND hook: epd's dispatcher when the a2a backend is DeepEP-like, else SGLang's own."""
    from sglang.srt.distributed.parallel_state import (get_moe_ep_group, get_moe_expert_parallel_rank,
                                                       get_moe_expert_parallel_world_size)
    from sglang.srt.layers.moe.utils import get_moe_a2a_backend, is_tbo_enabled

    from epd.vllm._link import Link
    from epd.vllm.manager import _placements
    from .dispatcher import EpdTboDispatcher
    if not get_moe_a2a_backend().is_deepep():
        logger.warning("%s is set but SGLang's --moe-a2a-backend is not deepep: epd will NOT be used (the model "
                       "would reduce epd's output a second time with another backend name).", ENV_MODE)
        return original(moe_runner_config, quant_method, *args, **kwargs)
    rank, world = get_moe_expert_parallel_rank(), get_moe_expert_parallel_world_size()
    device = None
    import torch
    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    link = Link.attach(rank, _placements(get_moe_ep_group().cpu_group, device))
    return EpdTboDispatcher(link, 2 if is_tbo_enabled() else 1, mode=selected_mode(), world_size=world, rank=rank,
                            num_experts=moe_runner_config.num_experts,
                            num_local_experts=moe_runner_config.num_local_experts, top_k=moe_runner_config.top_k,
                            hidden_size=moe_runner_config.hidden_size, params_dtype=moe_runner_config.params_dtype,
                            max_tokens_per_rank=_max_tokens())
