"""Helpers for running vLLM's MoE kernels outside a vLLM server, for epd's tests and example.

- install_standins(): where vLLM's compiled extension does not load (a
  machine without CUDA; a torch other than the 2.14 vLLM 0.34 was built
  for), `torch.ops._C.silu_and_mul` is missing: a plain-torch stand-in
  (out = silu(x[:d]) * x[d:]) is registered, for CPU and CUDA tensors. Without
  CUDA, NaiveBatchedExperts' capture check (it asks the CUDA stream) is
  replaced by one that asks torch.compiler only. Each only where missing;
  nothing else of vLLM is replaced; the list of what was installed is returned.
- init_vllm_workspace(device): the workspace manager vLLM's model runner
  would set up.
- moe_config(...): a FusedMoEConfig for a kernel built by hand.
- reference_moe(...): the MoE layer in plain torch (fp32), independent of
  vLLM and epd: sum_k w[t,k] * W2[e] (silu(W1g[e] x) * W1u[e] x).

Thread-safety: call the installers once, before any kernel runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_keep = {}


def _has_op(ns: str, name: str) -> bool:
    try:
        getattr(getattr(torch.ops, ns), name)
        return True
    except (AttributeError, RuntimeError):
        return False


def install_standins() -> list:
    """Installs what is missing; returns the names of the stand-ins installed."""
    installed = []
    if not _has_op("_C", "silu_and_mul"):
        lib = _keep.setdefault("_C", torch.library.Library("_C", "FRAGMENT"))
        lib.define("silu_and_mul(Tensor(a!) result, Tensor input) -> ()")

        def silu_and_mul(out, x):
            d = x.shape[-1] // 2
            out.copy_((F.silu(x[..., :d].float()) * x[..., d:].float()).to(out.dtype))
        lib.impl("silu_and_mul", silu_and_mul, "CompositeExplicitAutograd")
        installed.append("_C::silu_and_mul")
    if not torch.cuda.is_available():
        import vllm.model_executor.layers.fused_moe.experts.fused_batched_moe as fbm
        fbm._is_capturing_or_compiling = torch.compiler.is_compiling
        installed.append("fused_batched_moe._is_capturing_or_compiling")
    return installed


def init_vllm_workspace(device, num_ubatches: int = 1) -> None:
    """One workspace per micro-batch, as vLLM's model runner sets up with DBO."""
    from vllm.v1.worker import workspace
    if getattr(workspace, "_manager", None) is None:
        workspace.init_workspace_manager(torch.device(device), num_ubatches=num_ubatches)


def moe_config(*, num_experts, num_local_experts, top_k, hidden, intermediate, dtype, max_tokens, device,
               world_size=1, rank=0):
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.config import (FusedMoEConfig, FusedMoEParallelConfig,
                                                             RoutingMethodType)
    return FusedMoEConfig(num_experts=num_experts, experts_per_token=top_k, hidden_dim=hidden,
                          intermediate_size=intermediate, num_local_experts=num_local_experts,
                          num_logical_experts=num_experts, moe_parallel_config=FusedMoEParallelConfig.make_no_parallel(),
                          activation=MoEActivation.SILU, in_dtype=dtype, device=device,
                          routing_method=RoutingMethodType.TopK, max_num_tokens=max_tokens)


def reference_moe(x, topk_ids, topk_weights, w1, w2):
    """fp32 reference of the whole layer over global experts; w1 [E, 2N, H], w2 [E, H, N]."""
    n_half = w1.shape[1] // 2
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32)
    xf = x.float().cpu()
    for t in range(x.shape[0]):
        for k in range(topk_ids.shape[1]):
            e = int(topk_ids[t, k])
            if e < 0:
                continue
            h = w1[e].float().cpu() @ xf[t]
            act = F.silu(h[:n_half]) * h[n_half:]
            out[t] += float(topk_weights[t, k]) * (w2[e].float().cpu() @ act)
    return out


def torch_padded_experts(moe_config, quant_config):
    """A PaddedStandard experts class in plain torch, for the rank_major tests on machines without
    Triton (vLLM's PaddedStandard experts are Triton/CUDA kernels; the GPU tests use TritonExperts).
    Output [M, top_k, K], unweighted, left to the prepare/finalize's reduction (Delegate); rows and
    slots with id -1 or an expert of another rank (expert_map -1) are skipped, their output zero."""
    import vllm.model_executor.layers.fused_moe.modular_kernel as mk
    from vllm.model_executor.layers.fused_moe.topk_weight_and_reduce import TopKWeightAndReduceDelegate

    class TorchPaddedExperts(mk.FusedMoEExpertsModular):
        @staticmethod
        def activation_format():
            return mk.FusedMoEActivationFormat.PaddedStandard

        @staticmethod
        def _supports_current_device():
            return True

        @staticmethod
        def _supports_no_act_and_mul():
            return False

        @staticmethod
        def _supports_quant_scheme(weight_key, activation_key):
            return weight_key is None and activation_key is None

        @staticmethod
        def _supports_activation(activation):
            return True

        @staticmethod
        def _supports_parallel_config(moe_parallel_config):
            return True

        def finalize_weight_and_reduce_impl(self):
            return TopKWeightAndReduceDelegate()

        def workspace_shapes(self, M, N, K, topk, global_num_experts, local_num_experts, expert_tokens_meta,
                             activation):
            return (0,), (0,), (M, topk, K)

        def apply(self, output, hidden_states, w1, w2, topk_weights, topk_ids, activation, global_num_experts,
                  expert_map, a1q_scale, a2_scale, workspace13, workspace2, expert_tokens_meta,
                  apply_router_weight_on_input):
            output.zero_()
            local = topk_ids.long()
            if expert_map is not None:
                local = torch.where(local >= 0, expert_map[local.clamp(min=0)].long(), local)
            n_half = w1.shape[1] // 2
            for e in range(w1.shape[0]):
                rows, ks = (local == e).nonzero(as_tuple=True)
                if rows.numel() == 0:
                    continue
                h = hidden_states[rows].float() @ w1[e].float().T
                act = F.silu(h[:, :n_half]) * h[:, n_half:]
                output[rows, ks] = (act @ w2[e].float().T).to(output.dtype)

    return TorchPaddedExperts(moe_config, quant_config)
