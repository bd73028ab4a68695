"""One EP rank of the vLLM engine tests: a worker process, not a test module (no test functions).

argv: socket rank world seed [device]. It builds vLLM's own FusedMoEKernel
with the epd prepare/finalize of each layout (rank_major: a plain-torch
PaddedStandard experts class on CPU, vLLM's TritonExperts on a GPU;
expert_major: vLLM's NaiveBatchedExperts), runs the STEPS below through a real
epd (two micro-batch threads registered as vLLM's DBO ubatches 0 and 1, so
both slots are in flight at once), then an expert_major pass with block-128
fp8 weights (epd quantizes the dispatch to e4m3 + scales; vLLM's
NaiveBatchedExperts dequantizes), and compares every output with
epd.vllm.testing.reference_moe, a plain fp32 loop over (token, k) that uses
neither vLLM nor epd. Exit 0 and "OK rank R" on success; else it prints what
differed (with the seed) and exits 1.
"""
from __future__ import annotations

import threading

E, TOP_K, HIDDEN, INTER, MAX_TOKENS = 8, 2, 128, 64, 12
# Each step: micro-batches run concurrently, one per slot: (slot, route, tokens per rank [r0, r1, ...]).
STEPS = [
    [(0, "random", [5, 12, 0, 7])],
    [(0, "random", [12, 3, 9, 1]), (1, "skew:0", [4, 0, 12, 6])],
    [(1, "random", [0, 0, 0, 0])],
    [(1, "skew:7", [12, 12, 12, 12]), (0, "random", [1, 0, 2, 0])],
    [(0, "random", [0, 5, 0, 3]), (1, "random", [7, 0, 1, 12])],
]


def owned(rank, world):
    """vLLM's linear placement (= epd's default): the first E % W ranks own one expert more."""
    base, extra = divmod(E, world)
    first = rank * base + min(rank, extra)
    return first, base + (1 if rank < extra else 0)


def inputs(seed, step, slot, rank, n, route, dtype, device):
    import torch
    g = torch.Generator().manual_seed(seed * 1000003 + step * 7919 + slot * 131 + rank)
    x = torch.randn(n, HIDDEN, generator=g).to(dtype)
    ids = torch.stack([torch.randperm(E, generator=g)[:TOP_K] for _ in range(n)]) if n else \
        torch.empty(0, TOP_K, dtype=torch.int64)
    if route.startswith("skew:") and n:
        hot = int(route.split(":")[1])
        for t in range(n):  # every token to expert `hot`, its other choice anywhere else
            others = [e for e in ids[t].tolist() if e != hot]
            ids[t] = torch.tensor([hot] + others[:TOP_K - 1])
    w = torch.rand(n, TOP_K, generator=g, dtype=torch.float32) + 0.1
    return x.to(device), ids.to(torch.int32).to(device), w.to(device)


def weights(seed, dtype):
    import torch
    g = torch.Generator().manual_seed(seed)
    w1 = (torch.randn(E, 2 * INTER, HIDDEN, generator=g) / HIDDEN ** 0.5).to(dtype)
    w2 = (torch.randn(E, HIDDEN, INTER, generator=g) / INTER ** 0.5).to(dtype)
    return w1, w2


def fp8_weights(w):
    """Block-128 fp8 weights as vLLM stores them: e4m3 values and one fp32 scale per 128x128 block
    (these shapes fit one block per expert), and the dequantized weights the reference uses."""
    import torch
    scale = (w.float().abs().amax(dim=(1, 2)) / 448.0).view(-1, 1, 1)
    q = (w.float() / scale).to(torch.float8_e4m3fn)
    return q, scale, (q.float() * scale).to(w.dtype)


def build_kernel(layout, link, rank, world, device, dtype, fp8_scales=None):
    import torch
    import vllm.model_executor.layers.fused_moe.modular_kernel as mk
    from vllm.model_executor.layers.fused_moe.config import FusedMoEQuantConfig

    from epd.vllm import EpdExpertMajorPrepareAndFinalize, EpdRankMajorPrepareAndFinalize
    from epd.vllm import testing
    first, local = owned(rank, world)
    cfg = testing.moe_config(num_experts=E, num_local_experts=local, top_k=TOP_K, hidden=HIDDEN,
                             intermediate=INTER, dtype=dtype, max_tokens=MAX_TOKENS, device=device)
    if fp8_scales is None:
        qc = FusedMoEQuantConfig.make()
    else:  # block-128 fp8 inputs: epd quantizes the dispatch
        s1, s2 = (t[first:first + local].to(device) for t in fp8_scales)
        qc = FusedMoEQuantConfig.make(torch.float8_e4m3fn, block_shape=[128, 128], w1_scale=s1, w2_scale=s2)
    common = dict(world_size=world, rank=rank, num_experts=E, top_k=TOP_K, max_tokens_per_rank=MAX_TOKENS,
                  num_local_experts=local)
    if layout == "expert_major":
        from vllm.model_executor.layers.fused_moe.experts.fused_batched_moe import NaiveBatchedExperts
        pf = EpdExpertMajorPrepareAndFinalize(link, **common)
        experts = NaiveBatchedExperts(cfg, qc, max_num_tokens=MAX_TOKENS, num_dispatchers=world)
    else:
        pf = EpdRankMajorPrepareAndFinalize(link, **common)
        if torch.device(device).type == "cuda":
            from vllm.model_executor.layers.fused_moe.experts.triton_moe import TritonExperts
            experts = TritonExperts(cfg, qc)
        else:
            experts = testing.torch_padded_experts(cfg, qc)
    expert_map = torch.full((E,), -1, dtype=torch.int32)
    expert_map[first:first + local] = torch.arange(local, dtype=torch.int32)
    return mk.FusedMoEKernel(pf, experts), expert_map.to(device), first, local


_ubatch = threading.local()


def emulate_dbo_ubatch_ids():
    """vLLM's DBO runs each micro-batch on its own thread and dbo_current_ubatch_id() names it. Its
    real context also schedules compute/communication hand-offs we do not want here, so only the id
    lookup is replaced (in ubatching and in the workspace manager, which keys its buffers by it)."""
    from vllm.v1.worker import ubatching, workspace

    def ubatch_id():
        return getattr(_ubatch, "id", 0)
    ubatching.dbo_current_ubatch_id = ubatch_id
    workspace.dbo_current_ubatch_id = ubatch_id


def run_microbatch(kernel, expert_map, w1l, w2l, x, ids, w, slot, results, key):
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    _ubatch.id = slot
    try:
        x0, ids0 = x.clone(), ids.clone()
        out = kernel.apply(x, w1l, w2l, w, ids, activation=MoEActivation.SILU, global_num_experts=E,
                           expert_map=expert_map, apply_router_weight_on_input=False)
        results[key] = (out, bool((x == x0).all()) and bool((ids == ids0).all()))
    except BaseException as e:  # reported by the main thread
        results[key] = e


def check(out, ref, ctx, rel=0.02):
    import torch
    if tuple(out.shape) != tuple(ref.shape):
        raise AssertionError(f"{ctx}: output shape {tuple(out.shape)}, want {tuple(ref.shape)}")
    if ref.numel() == 0:
        return
    err = (out.float().cpu() - ref).abs().max().item()
    tol = rel * max(1.0, ref.abs().max().item())
    if not err <= tol or not torch.isfinite(out.float()).all():
        raise AssertionError(f"{ctx}: max |out - reference| = {err:.4g} > {tol:.4g}")


def run_layout(layout, link, seed, rank, world, device, dtype, fp8=False):
    w1, w2 = weights(seed, dtype)
    scales, tol = None, 0.02
    if fp8:
        (w1q, s1, w1), (w2q, s2, w2) = fp8_weights(w1), fp8_weights(w2)
        scales, tol = (s1, s2), 0.08  # e4m3 inputs: 3 mantissa bits
    kernel, expert_map, first, local = build_kernel(layout, link, rank, world, device, dtype, scales)
    src1, src2 = (w1q, w2q) if fp8 else (w1, w2)
    w1l, w2l = src1[first:first + local].contiguous().to(device), src2[first:first + local].contiguous().to(device)
    for s, step in enumerate(STEPS[:2] if fp8 else STEPS):
        results, threads, cases = {}, [], {}
        for slot, route, ns in step:
            x, ids, w = inputs(seed, s, slot, rank, ns[rank % len(ns)], route, dtype, device)
            cases[slot] = (x, ids, w, route)
            threads.append(threading.Thread(target=run_microbatch, args=(kernel, expert_map, w1l, w2l, x, ids, w,
                                                                         slot, results, slot)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
            if t.is_alive():
                raise AssertionError(f"{layout} step {s}: a micro-batch did not finish within 300 s")
        for slot, (x, ids, w, route) in cases.items():
            got = results[slot]
            if isinstance(got, BaseException):
                raise AssertionError(f"{layout} step {s} slot {slot} ({route}, n={x.shape[0]}): {got!r}") from got
            out, unmodified = got
            ctx = f"{layout}{' fp8' if fp8 else ''} step {s} slot {slot} ({route}, n={x.shape[0]}, seed {seed})"
            if not unmodified:
                raise AssertionError(f"{ctx}: the caller's x or topk_ids changed")
            from epd.vllm.testing import reference_moe
            check(out, reference_moe(x.cpu(), ids.cpu(), w.cpu(), w1, w2), ctx, tol)
    if fp8 and not any(int(g.spec["dispatch_quant"]) == 1 and int(g.spec["layout"]) == 1 for g in link.groups()):
        raise AssertionError("the fp8 pass did not run an fp8 (e4m3 block-128) expert_major group")
    return kernel


def check_capacity(kernel, device, dtype, layout):
    """n > max_tokens_per_rank is refused with CAPACITY_EXCEEDED on this rank alone (nothing is sent)."""
    import epd
    x, ids, w = inputs(0, 99, 0, 0, MAX_TOKENS + 1, "random", dtype, device)
    try:
        kernel.prepare_finalize.prepare(x, w, ids, E, None, False, kernel.fused_experts.quant_config)
    except epd.EpdError as e:
        if e.status != epd.Status.CAPACITY_EXCEEDED:
            raise AssertionError(f"{layout}: {MAX_TOKENS + 1} tokens gave {e.status!r}, want CAPACITY_EXCEEDED")
        return
    raise AssertionError(f"{layout}: {MAX_TOKENS + 1} tokens (> max_tokens_per_rank) were accepted")


def main(argv):
    sock, rank, world, seed = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    device = argv[5] if len(argv) > 5 else "cpu"
    import torch
    torch.set_num_threads(1)
    from epd.vllm import testing
    from epd.vllm._link import Link
    testing.install_standins()
    testing.init_vllm_workspace(device, num_ubatches=2)
    emulate_dbo_ubatch_ids()
    dtype = torch.bfloat16
    link = Link.attach(rank, None if device == "cpu" else [(0, torch.device(device).index or 0)] * world, sock)
    try:
        for layout in ("rank_major", "expert_major"):
            kernel = run_layout(layout, link, seed, rank, world, device, dtype)
            check_capacity(kernel, device, dtype, layout)
        run_layout("expert_major", link, seed, rank, world, device, dtype, fp8=True)
    finally:
        Link.detach()
    print(f"OK rank {rank}", flush=True)
    return 0


if __name__ == "__main__":
    import rank_main  # beside this script
    rank_main.run(main)
