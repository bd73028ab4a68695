"""A pytest plugin, not a test module: `-p test_engines_vllm_mk_patch` runs vLLM's own modular-kernel
sweep (the sdist's tests/kernels/moe/test_modular_kernel_combinations.py) with epd's prepare/finalize.

It wraps modular_kernel_tools.common.make_modular_kernel: after vLLM built its kernel, the
prepare/finalize is replaced by epd's (world size 1, GPU 0, the daemon at $EPD_SOCKET) wherever the
experts take epd's formats: BatchedExperts -> expert_major, PaddedStandard -> rank_major. Experts of
the Standard format (they cannot skip padded rows) and input quantizations epd does not dispatch keep
vLLM's prepare/finalize; the session's last line counts both, so a sweep that never used epd shows.

Cases whose experts class declares the Standard format (a static activation_format()) are deselected
at collection: epd's prepare/finalize never runs in them. EPD_MK_SWEEP_QUANT=none also deselects the
quantized cases (a shorter sweep, for a short GPU session). The last line counts both.
"""
from __future__ import annotations

import os

_count = {"epd": 0, "vllm": 0}
_deselected = {"standard format": 0, "quantized (EPD_MK_SWEEP_QUANT=none)": 0}


def _static_format(experts):
    try:
        return experts.activation_format()
    except TypeError:  # an instance method: decided when the kernel is built
        return None


def pytest_collection_modifyitems(config, items):
    import vllm.model_executor.layers.fused_moe.modular_kernel as mk
    served = (mk.FusedMoEActivationFormat.BatchedExperts, mk.FusedMoEActivationFormat.PaddedStandard)
    unquantized_only = os.environ.get("EPD_MK_SWEEP_QUANT") == "none"
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        experts = params.get("fused_experts_type")
        fmt = _static_format(experts) if experts is not None else None
        if fmt is not None and fmt not in served:
            _deselected["standard format"] += 1
            drop.append(item)
        elif unquantized_only and params.get("quant_config") is not None:
            _deselected["quantized (EPD_MK_SWEEP_QUANT=none)"] += 1
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_configure(config):
    import tests.kernels.moe.modular_kernel_tools.common as common
    original = common.make_modular_kernel

    def make_modular_kernel(cfg, vllm_config, quant_config):
        kernel = original(cfg, vllm_config, quant_config)
        replaced = _with_epd(kernel, cfg, quant_config)
        _count["epd" if replaced is not kernel else "vllm"] += 1
        return replaced
    common.make_modular_kernel = make_modular_kernel


def _with_epd(kernel, cfg, quant_config):
    import vllm.model_executor.layers.fused_moe.modular_kernel as mk

    import epd
    from epd.vllm import EpdExpertMajorPrepareAndFinalize, EpdRankMajorPrepareAndFinalize
    from epd.vllm._link import Link
    from epd.vllm.prepare_finalize import dispatch_quant_for
    fmt = kernel.fused_experts.activation_format()
    cls = {mk.FusedMoEActivationFormat.BatchedExperts: EpdExpertMajorPrepareAndFinalize,
           mk.FusedMoEActivationFormat.PaddedStandard: EpdRankMajorPrepareAndFinalize}.get(fmt)
    if cls is None:
        return kernel
    try:
        dispatch_quant_for(quant_config, kernel.fused_experts.expects_unquantized_inputs, cfg.K)
    except epd.EpdError:
        return kernel
    max_tokens = kernel.prepare_finalize.max_num_tokens_per_rank() or \
        getattr(kernel.fused_experts, "max_num_tokens", None) or cfg.M
    link = Link.attach(0, [(0, 0)], os.environ.get("EPD_SOCKET"))
    pf = cls(link, world_size=1, rank=0, num_experts=cfg.E, top_k=cfg.topk, max_tokens_per_rank=max_tokens,
             num_local_experts=cfg.num_local_experts)
    return mk.FusedMoEKernel(pf, kernel.fused_experts)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"epd prepare/finalize used in {_count['epd']} kernels; vLLM's kept in "
                                f"{_count['vllm']} (Standard-format experts or an input quantization epd "
                                f"does not dispatch); deselected: "
                                + ", ".join(f"{n} {why}" for why, n in _deselected.items()))
