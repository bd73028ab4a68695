#!/usr/bin/env python3
"""A tiny MoE layer in vLLM's own kernel (FusedMoEKernel) through epd, on 2 worker processes.

Start epd first (docs/ENGINES.md), then:

    python3 examples/vllm_moe_two_workers.py --socket /tmp/epd/epd.sock [--layout expert_major|rank_major]
                                             [--device cpu|cuda]

Each worker is one EP rank owning half of the 8 experts. It routes its own
tokens at random, runs vLLM's FusedMoEKernel with epd's prepare/finalize
(expert_major: vLLM's NaiveBatchedExperts; rank_major: vLLM's TritonExperts on
a GPU, a plain-torch stand-in on CPU), and prints the largest difference from
the same layer computed in plain fp32 torch on all 8 experts. --device cpu uses
epd's host executor; --device cuda puts both ranks on GPU 0 (epd built with CUDA).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys

WORLD, E, TOP_K, HIDDEN, INTER, MAX_TOKENS = 2, 8, 2, 256, 128, 32


def build_kernel(args, rank, link, local):
    """vLLM's FusedMoEKernel with epd's prepare/finalize for args.layout and vLLM's experts for it."""
    import torch
    import vllm.model_executor.layers.fused_moe.modular_kernel as mk
    from vllm.model_executor.layers.fused_moe.config import FusedMoEQuantConfig

    from epd.vllm import EpdExpertMajorPrepareAndFinalize, EpdRankMajorPrepareAndFinalize, testing
    cfg = testing.moe_config(num_experts=E, num_local_experts=local, top_k=TOP_K, hidden=HIDDEN,
                             intermediate=INTER, dtype=torch.bfloat16, max_tokens=MAX_TOKENS, device=args.device)
    qc = FusedMoEQuantConfig.make()
    common = dict(world_size=WORLD, rank=rank, num_experts=E, top_k=TOP_K, max_tokens_per_rank=MAX_TOKENS,
                  num_local_experts=local)
    if args.layout == "expert_major":
        from vllm.model_executor.layers.fused_moe.experts.fused_batched_moe import NaiveBatchedExperts
        return mk.FusedMoEKernel(EpdExpertMajorPrepareAndFinalize(link, **common),
                                 NaiveBatchedExperts(cfg, qc, max_num_tokens=MAX_TOKENS, num_dispatchers=WORLD))
    if args.device == "cpu":
        return mk.FusedMoEKernel(EpdRankMajorPrepareAndFinalize(link, **common), testing.torch_padded_experts(cfg, qc))
    from vllm.model_executor.layers.fused_moe.experts.triton_moe import TritonExperts
    return mk.FusedMoEKernel(EpdRankMajorPrepareAndFinalize(link, **common), TritonExperts(cfg, qc))


def worker(rank: int, args, queue) -> None:
    import torch
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    from epd.vllm import testing
    from epd.vllm._link import Link

    torch.set_num_threads(1)
    testing.install_standins()  # only what vLLM's compiled extension would provide and cannot here
    testing.init_vllm_workspace(args.device)
    local = E // WORLD
    first = rank * local
    link = Link.attach(rank, None if args.device == "cpu" else [(0, 0)] * WORLD, args.socket)
    try:
        kernel = build_kernel(args, rank, link, local)
        g = torch.Generator().manual_seed(1234)  # the same weights on both ranks
        w1 = (torch.randn(E, 2 * INTER, HIDDEN, generator=g) / HIDDEN ** 0.5).to(torch.bfloat16)
        w2 = (torch.randn(E, HIDDEN, INTER, generator=g) / INTER ** 0.5).to(torch.bfloat16)
        g.manual_seed(99 + rank)  # each rank's own tokens
        n = MAX_TOKENS - 7 * rank
        x = torch.randn(n, HIDDEN, generator=g).to(torch.bfloat16)
        ids = torch.stack([torch.randperm(E, generator=g)[:TOP_K] for _ in range(n)]).to(torch.int32)
        w = torch.softmax(torch.randn(n, TOP_K, generator=g), dim=-1)
        expert_map = torch.full((E,), -1, dtype=torch.int32)
        expert_map[first:first + local] = torch.arange(local, dtype=torch.int32)
        dev = args.device
        out = kernel.apply(x.to(dev), w1[first:first + local].to(dev), w2[first:first + local].to(dev),
                           w.to(dev), ids.to(dev), activation=MoEActivation.SILU, global_num_experts=E,
                           expert_map=expert_map.to(dev), apply_router_weight_on_input=False)
        ref = testing.reference_moe(x, ids, w, w1, w2)
        queue.put((rank, n, (out.float().cpu() - ref).abs().max().item(), ref.abs().max().item()))
    finally:
        Link.detach()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True, help="the epd socket (epd --socket PATH)")
    p.add_argument("--layout", choices=("expert_major", "rank_major"), default="expert_major")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for the workers")
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, args, queue)) for r in range(WORLD)]
    for proc in procs:
        proc.start()
    results = []
    for _ in procs:
        try:
            results.append(queue.get(timeout=args.timeout))
        except Exception:
            break
    for proc in procs:
        proc.join(timeout=60)  # a worker leaves its group and unloads vLLM on exit
        if proc.is_alive():
            proc.kill()
            proc.join()
    ok = len(results) == WORLD and all(proc.exitcode == 0 for proc in procs)
    for rank, n, err, scale in sorted(results):
        print(f"rank {rank}: {n} tokens through epd ({args.layout}, {args.device}), "
              f"max |vLLM kernel - reference| = {err:.4f} (outputs up to {scale:.2f})")
    if not ok:
        print(f"failed: {len(results)} of {WORLD} workers reported; exit codes "
              f"{[proc.exitcode for proc in procs]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
