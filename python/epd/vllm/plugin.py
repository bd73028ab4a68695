"""vLLM general plugin (entry point group `vllm.general_plugins`, name `epd`).

vLLM runs register() in every process it starts. With $VLLM_EPD_BACKEND unset
it does nothing. With VLLM_EPD_BACKEND=epd_high_throughput (rank_major) or
epd_low_latency (expert_major) it wraps two of vLLM 0.34's functions, without
changing vLLM's files:

- CudaCommunicator.__init__: after vLLM built the EP communicator's manager
  for the configured --all2all-backend (any value; the default
  allgather_reducescatter costs nothing to build), the manager becomes an
  EpdAll2AllManager that keeps vLLM's as `inner`.
- all2all_utils.maybe_make_prepare_finalize (and the same name in each
  module that imported it): when the layer uses all2all kernels and the EP
  manager is epd's, it returns the epd prepare/finalize.

A name cannot go through --all2all-backend: vLLM's Literal refuses names it
does not list, hence the variable. Configurations where epd would silently
not run get a warning: expert parallelism without data parallelism (TP-only
EP: vLLM uses no all2all at all), and experts whose activation format cannot
consume the chosen layout (prepare_finalize.post_init_setup).

Thread-safety: register() runs at process start, before vLLM's threads exist;
it is idempotent.
"""
from __future__ import annotations

import functools
import logging
import sys

logger = logging.getLogger("epd.vllm")

_IMPORTERS = (  # vLLM 0.34 modules that import maybe_make_prepare_finalize by name
    "vllm.model_executor.layers.fused_moe.oracle.base",
    "vllm.model_executor.layers.fused_moe.eep_reconfigure",
    "vllm.model_executor.layers.quantization.modelopt_block_quant",
    "vllm.model_executor.layers.quantization.utils.humming.moe",
    "vllm.model_executor.layers.fused_moe.experts.lut_b_moe",
)
_state = {"registered": False}


def register() -> None:
    """The entry point: installs the wrappers when $VLLM_EPD_BACKEND names an epd backend."""
    from ._names import selected_backend
    backend = selected_backend()
    if backend is None or _state["registered"]:
        return
    _state["registered"] = True
    _wrap_communicator(backend)
    _wrap_prepare_finalize_factory()
    logger.info("epd: vLLM plugin active, backend %s", backend)


def _wrap_communicator(backend: str) -> None:
    from vllm.distributed.device_communicators import cuda_communicator as cc
    original = cc.CudaCommunicator.__init__
    if getattr(original, "_epd_wrapped", False):
        return

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        install_manager(self, backend)
    init._epd_wrapped = True
    cc.CudaCommunicator.__init__ = init


def install_manager(communicator, backend: str) -> None:
    """Replaces the EP communicator's all2all manager by epd's (warns where vLLM uses none)."""
    from .manager import EpdAll2AllManager
    if not getattr(communicator, "is_ep_communicator", False):
        return
    if not communicator.use_all2all:
        logger.warning(
            "epd backend %s is selected but vLLM uses no all2all for this EP group (expert parallelism "
            "without data parallelism: TP-only EP). epd will NOT be used; run with --data-parallel-size > 1 "
            "and --enable-expert-parallel.", backend)
        return
    inner = communicator.all2all_manager
    communicator.all2all_manager = EpdAll2AllManager(communicator.cpu_group, backend=backend,
                                                     device=getattr(communicator, "device", None), inner=inner)


def _wrap_prepare_finalize_factory() -> None:
    import importlib

    from vllm.model_executor.layers.fused_moe import all2all_utils
    original = all2all_utils.maybe_make_prepare_finalize
    if getattr(original, "_epd_wrapped", False):
        return
    wrapped = functools.wraps(original)(functools.partial(_make_prepare_finalize, original))
    wrapped._epd_wrapped = True
    all2all_utils.maybe_make_prepare_finalize = wrapped
    for name in _IMPORTERS:
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # a module that needs a missing optional dependency
            logger.debug("epd: %s not patched (%s)", name, e)
            continue
        if getattr(mod, "maybe_make_prepare_finalize", None) is original:
            mod.maybe_make_prepare_finalize = wrapped
    for mod in list(sys.modules.values()):  # any other module that imported it by name already
        if getattr(mod, "maybe_make_prepare_finalize", None) is original:
            mod.maybe_make_prepare_finalize = wrapped


def _make_prepare_finalize(original, moe, quant_config, *args, **kwargs):
    from ._names import selected_backend
    from .manager import EpdAll2AllManager, make_prepare_finalize
    pc = moe.moe_parallel_config
    if not pc.use_all2all_kernels:
        if pc.use_ep:
            logger.warning("epd backend %s is selected but this MoE layer runs expert parallelism without "
                           "data parallelism (TP-only EP: dp_size = %d): vLLM uses no all2all and epd will NOT "
                           "be used.", selected_backend(), pc.dp_size)
        return original(moe, quant_config, *args, **kwargs)
    manager = kwargs.get("all2all_manager")
    if manager is None:
        from vllm.model_executor.layers.fused_moe.all2all_utils import get_ep_all2all_manager
        manager = get_ep_all2all_manager()
    if not isinstance(manager, EpdAll2AllManager):
        logger.warning("epd backend %s is selected but the EP group's all2all manager is %s (not made by the "
                       "epd plugin): epd will NOT be used for this layer.", selected_backend(),
                       type(manager).__name__)
        return original(moe, quant_config, *args, **kwargs)
    return make_prepare_finalize(manager, moe, quant_config)
