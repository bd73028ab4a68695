"""Helpers for running vLLM's MoE kernels outside a vLLM server, for epd's tests and example.

- install_standins(): where vLLM's compiled extensions do not load (a machine
  without CUDA; a torch other than the 2.14 vLLM 0.34 was built for; the GPU
  test machine, which gets vLLM's Python files only), what vLLM's MoE kernels
  need from them is stood in for, each piece only where it is missing:
  * `vllm._C_stable_libtorch`: an empty module in sys.modules, because
    vllm/platforms/cuda.py imports it unconditionally (it would register the
    ops; the stand-ins below register the ones epd's tests use). Left alone
    where it is present: imported, being imported, or a Python file (the
    stand-in module gpu_engine_run.sh writes, which calls install_standins()).
  * `torch.ops._C.silu_and_mul`: out = silu(x[:d]) * x[d:], in fp32.
  * `torch.ops._moe_C.moe_align_block_size` and `torch.ops._moe_C.moe_sum`
    (TritonExperts' alignment and top-k reduction): plain torch, exact to
    vLLM's CUDA kernels (csrc/moe/moe_align_sum_kernels.cu) for the arguments
    vLLM passes, with fixed shapes and no host synchronisation, so a CUDA graph
    can capture them. Registered in the ops' own namespaces with vLLM's
    schemas, for CPU and CUDA tensors (a no-op Meta kernel for shapes).
  Before an op is stood in for, vLLM's extension that defines it is imported
  when it is a compiled file that loads, so a real op is never shadowed.
  Without CUDA, NaiveBatchedExperts' capture check (it asks the CUDA stream)
  is replaced by one that asks torch.compiler only. Nothing else of vLLM is
  replaced; the names installed by this call are returned. The op stand-ins
  need torch only (not vLLM).
- init_vllm_workspace(device): the workspace manager vLLM's model runner
  would set up.
- moe_config(...): a FusedMoEConfig for a kernel built by hand.
- reference_moe(...): the MoE layer in plain torch (fp32), independent of
  vLLM and epd: sum_k w[t,k] * W2[e] (silu(W1g[e] x) * W1u[e] x).

Thread-safety: call the installers once, before any kernel runs.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types

import torch
import torch.nn.functional as F

_keep = {}
_installed = set()  # the names install_standins() installed in this process

# vLLM's compiled extensions that define the ops stood in for below (CUDA builds; vllm._C on CPU builds).
_EXTENSIONS = {"_C": ("vllm._C_stable_libtorch", "vllm._C"),
               "_moe_C": ("vllm._moe_C_stable_libtorch", "vllm._moe_C")}
_CUDA_WARP = 32  # the thread stride of vLLM's small-batch alignment kernel is max(num_experts, warp size)


def _has_op(ns: str, name: str) -> bool:
    try:
        getattr(getattr(torch.ops, ns), name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _vllm_spec(name: str):
    """find_spec for a vllm submodule not in sys.modules; None where vLLM itself is missing."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _is_extension(spec) -> bool:
    origin = getattr(spec, "origin", None) or ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def _load_real_extensions(ns: str) -> None:
    """Imports vLLM's compiled extensions for namespace `ns` that exist and load, so that their ops, not a
    stand-in, get defined. A failure to load is not an error here: the stand-in covers it."""
    for name in _EXTENSIONS[ns]:
        if name in sys.modules or not _is_extension(_vllm_spec(name)):
            continue
        try:
            importlib.import_module(name)
        except (ImportError, OSError):
            pass


def _being_imported(name: str) -> bool:
    spec = getattr(sys.modules.get(name), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise RuntimeError(msg)


def _local_expert_ids(topk_ids, num_experts, expert_map):
    """Per routed row (topk_ids flattened): the local expert, or -1 where the row is not computed here
    (id negative or >= num_experts, or expert_map -1). The kernel reads each id into a 32-bit int."""
    ids = topk_ids.reshape(-1).to(torch.int32).to(torch.int64)
    in_range = (ids >= 0) & (ids < num_experts)
    if expert_map is not None:
        emap = expert_map.reshape(-1).to(device=ids.device, dtype=torch.int64)
        if emap.numel() == 0:
            in_range = torch.zeros_like(in_range)
        else:
            in_range = in_range & (ids < emap.numel())
            ids = emap.index_select(0, ids.clamp(0, emap.numel() - 1))
    valid = in_range & (ids >= 0) & (ids < num_experts)
    return torch.where(valid, ids, -1), valid


def moe_align_block_size_standin(topk_ids, num_experts, block_size, sorted_token_ids, experts_ids,
                                 num_tokens_post_pad, maybe_expert_map=None, scatter_idx=None):
    """_moe_C::moe_align_block_size in plain torch (tested in python/tests/test_engines_vllm_standins.py).
    A row (topk_ids flattened) counts for expert e = expert_map[id] (id without a map) when 0 <= id <
    num_experts and 0 <= e < num_experts; each expert's rows fill a run rounded up to block_size, runs in
    expert order; sorted_token_ids[:size(0)] = the rows, numel() elsewhere; experts_ids[b] = the run's
    expert, -1 from the end of the runs to ceil(size(0) / block_size); num_tokens_post_pad[0] = the runs'
    length; scatter_idx[i] = i for a row that counts, else -1."""
    _check(topk_ids.is_contiguous(), "topk_ids must be contiguous")
    _check(block_size > 0, "block_size must be positive")
    _check((num_experts + _CUDA_WARP - 1) // _CUDA_WARP * _CUDA_WARP < 1024,
           "padded_num_experts must be less than 1024")
    dev = topk_ids.device
    n = topk_ids.numel()
    if scatter_idx is not None:
        _check(scatter_idx.dtype == torch.int32, "scatter_idx must be int32")
        _check(scatter_idx.device == dev and scatter_idx.is_contiguous() and scatter_idx.numel() == n,
               "scatter_idx must be contiguous, on the same device, and match topk_ids.numel()")
    local, valid = _local_expert_ids(topk_ids, num_experts, maybe_expert_map)
    rows = torch.arange(n, device=dev)
    if scatter_idx is not None:
        scatter_idx.view(-1).copy_(torch.where(valid, rows, -1))

    # Rows per expert, each expert's run rounded up to whole blocks, laid out in expert order.
    bucket = torch.where(valid, local, num_experts)  # bucket num_experts: rows not computed here
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=dev).scatter_add_(0, bucket,
                                                                                   torch.ones_like(bucket))
    padded = (counts[:num_experts] + block_size - 1) // block_size * block_size
    ends = torch.cumsum(padded, 0)
    total = padded.sum()
    num_tokens_post_pad.view(-1)[:1].copy_(total.reshape(1))

    # Order within an expert: the small-batch kernel (numel < 1024, <= 64 experts) gives thread
    # t = row % stride its rows in turn, threads in order; the other kernel takes places by atomics
    # (any order): rows ascending here.
    if n < 1024 and num_experts <= 64:
        stride = max(num_experts, _CUDA_WARP)
        per_thread = -(-n // stride)
        order, span = (rows % stride) * per_thread + rows // stride, stride * per_thread
    else:
        order, span = rows, n
    _, perm = torch.sort(bucket * max(span, 1) + order)
    sorted_bucket = bucket.index_select(0, perm)
    first = torch.cumsum(counts, 0) - counts  # first place of each bucket in perm
    rank = rows - first.index_select(0, sorted_bucket)
    starts = torch.cat([ends - padded, ends.new_zeros(1)])
    size = sorted_token_ids.size(0)
    dest = starts.index_select(0, sorted_bucket) + rank
    dest = torch.where((sorted_bucket < num_experts) & (dest < size), dest, size)  # place `size`: dropped
    out = torch.full((size + 1,), n, dtype=torch.int32, device=dev)
    out.scatter_(0, dest, perm.to(torch.int32))
    sorted_token_ids.copy_(out[:size])

    # Block b belongs to the expert whose run holds b * block_size; blocks past the runs: -1.
    blocks = min(experts_ids.size(0), -(-size // block_size))
    if blocks:
        start = torch.arange(blocks, device=dev) * block_size
        owner = torch.searchsorted(ends, start, right=True)
        experts_ids[:blocks].copy_(torch.where(start < total, owner, -1))


def moe_sum_standin(input, output, topk_ids=None, expert_map=None):
    """_moe_C::moe_sum in plain torch (tested in python/tests/test_engines_vllm_standins.py): output[t] =
    sum over k of input[t, k] in fp32, slot order, cast to the dtype; with topk_ids, slots with id < 0 or
    (with expert_map too) expert_map[id] < 0 are skipped; expert_map without topk_ids is ignored."""
    _check(output.is_contiguous(), "moe_sum expects a contiguous output")
    _check(input.dim() == 3, "moe_sum expects input [num_tokens, topk, hidden_size]")
    _check(input.dtype in (torch.float32, torch.float16, torch.bfloat16), f"moe_sum: {input.dtype} not supported")
    _check(output.dtype == input.dtype, "moe_sum: output must have the input's dtype")
    d, topk = input.size(-1), input.size(1)
    if d == 0:
        return
    t = output.numel() // d
    keep = None
    if topk_ids is not None:  # pad-aware: skip slots with id < 0 or (with expert_map) mapped to -1
        _check(topk_ids.dim() == 2 and topk_ids.size(0) == t and topk_ids.size(1) == topk,
               "moe_sum: topk_ids must have shape [num_tokens, topk]")
        ids = topk_ids.to(device=input.device, dtype=torch.int64)
        keep = ids >= 0
        if expert_map is not None:
            _check(expert_map.dtype == torch.int32, "moe_sum: expert_map must be int32")
            emap = expert_map.reshape(-1).to(device=input.device, dtype=torch.int64)
            if emap.numel() == 0:
                keep = torch.zeros_like(keep)
            else:
                mapped = emap.index_select(0, ids.clamp(0, emap.numel() - 1).reshape(-1)).view_as(ids)
                keep = keep & (ids < emap.numel()) & (mapped >= 0)
    acc = torch.zeros((t, d), dtype=torch.float32, device=input.device)
    for k in range(topk):  # fp32, in slot order, as the kernel adds
        x = input[:t, k].float()
        acc += x if keep is None else torch.where(keep[:, k:k + 1], x, 0.0)
    output.view(t, d).copy_(acc)


def _no_op(*args, **kwargs):
    return None


def silu_and_mul_standin(out, x):
    """_C::silu_and_mul in plain torch: out = silu(x[..., :d]) * x[..., d:], in fp32."""
    d = x.shape[-1] // 2
    out.copy_((F.silu(x[..., :d].float()) * x[..., d:].float()).to(out.dtype))


def _op_standins():
    """Per op namespace: op name -> (vLLM's schema, the stand-in)."""
    return {
        "_C": {"silu_and_mul": ("silu_and_mul(Tensor(a!) result, Tensor input) -> ()", silu_and_mul_standin)},
        "_moe_C": {
            "moe_align_block_size": ("moe_align_block_size(Tensor topk_ids, int num_experts, int block_size, "
                                     "Tensor! sorted_token_ids, Tensor! experts_ids, Tensor! num_tokens_post_pad, "
                                     "Tensor? maybe_expert_map, Tensor(a!)? scatter_idx=None) -> ()",
                                     moe_align_block_size_standin),
            "moe_sum": ("moe_sum(Tensor input, Tensor! output, Tensor? topk_ids=None, Tensor? expert_map=None) -> ()",
                        moe_sum_standin),
        },
    }


def install_standins() -> list:
    """Installs what is missing; returns the names of the stand-ins installed by this call."""
    installed = []
    name = "vllm._C_stable_libtorch"
    if name not in sys.modules:  # imported, or being imported (the stand-in module written by gpu_engine_run.sh)
        spec = _vllm_spec(name)
        if spec is not None and _is_extension(spec):
            try:
                importlib.import_module(name)
            except (ImportError, OSError):
                spec = None
        vllm = sys.modules.get("vllm")
        if spec is None and vllm is not None:  # vLLM is there, its compiled extension is not
            module = types.ModuleType(name, "epd.vllm.testing's empty stand-in for vLLM's compiled extension")
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = module
            setattr(vllm, "_C_stable_libtorch", module)
            installed.append(name)

    for ns, ops in _op_standins().items():
        if not all(_has_op(ns, op) for op in ops):
            _load_real_extensions(ns)
        for op, (schema, fn) in ops.items():
            if _has_op(ns, op):
                continue
            lib = _keep.setdefault(ns, torch.library.Library(ns, "FRAGMENT"))
            lib.define(schema)
            lib.impl(op, fn, "CompositeExplicitAutograd")
            lib.impl(op, _no_op, "Meta")  # outputs are written in place: nothing to say about shapes
            installed.append(f"{ns}::{op}")

    # Not from inside vLLM's CUDA platform import (the stand-in module): it would import vLLM's MoE layers.
    if not _being_imported(name) and not torch.cuda.is_available() and _vllm_spec("vllm") is not None:
        import vllm.model_executor.layers.fused_moe.experts.fused_batched_moe as fbm
        if fbm._is_capturing_or_compiling is not torch.compiler.is_compiling:
            fbm._is_capturing_or_compiling = torch.compiler.is_compiling
            installed.append("fused_batched_moe._is_capturing_or_compiling")
    _installed.update(installed)
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
