"""One EP rank of the SGLang engine test: a worker process, not a test module (no test functions).

argv: socket rank world seed. For both modes it builds an EpdTboDispatcher
(two sub-batches = epd slots 0 and 1), feeds SGLang's own StandardTopKOutput
through dispatch_a of both sub-batches before either dispatch_b (the overlap
order), runs per-expert functions f_e(x) = a_e * x + b_e on what SGLang's
DeepEP output types carry (normal: weighted sum over the row's local ids;
low_latency: rows per local expert up to masked_m), combines, and compares
with a plain loop over (token, k). Exit 0 with "OK rank R", else 1.
"""
from __future__ import annotations


E, TOP_K, HIDDEN, MAX_TOKENS = 6, 2, 64, 10
STEPS = [([4, 10], [0, 3]), ([0, 0], [7, 1]), ([10, 2], [10, 10])]  # (tokens of sub-batch 0, of 1) per rank


def f(e, x):
    return x.float() * (0.5 + 0.25 * e) + 0.01 * (e + 1)


def inputs(seed, step, sub, rank, n):
    import torch
    g = torch.Generator().manual_seed(seed * 7919 + step * 131 + sub * 17 + rank)
    x = torch.randn(n, HIDDEN, generator=g).to(torch.bfloat16)
    ids = torch.stack([torch.randperm(E, generator=g)[:TOP_K] for _ in range(n)]).to(torch.int32) if n else \
        torch.empty(0, TOP_K, dtype=torch.int32)
    w = torch.rand(n, TOP_K, generator=g) + 0.1
    return x, ids, w


def experts(mode, out, first, world):
    """SGLang's experts stand-in: reads the DispatchOutput, returns a CombineInput."""
    import torch
    from sglang.srt.layers.moe.token_dispatcher.deepep import DeepEPLLCombineInput, DeepEPNormalCombineInput
    if mode == "normal":
        y = torch.zeros(out.hidden_states.shape, dtype=torch.float32)
        for k in range(out.topk_ids.shape[1]):
            for r in range(out.hidden_states.shape[0]):
                le = int(out.topk_ids[r, k])
                if le >= 0:
                    y[r] += float(out.topk_weights[r, k]) * f(first + le, out.hidden_states[r])
        return DeepEPNormalCombineInput(y.to(torch.bfloat16), out.topk_ids, out.topk_weights)
    y = torch.zeros(out.hidden_states.shape, dtype=torch.bfloat16)
    for le in range(y.shape[0]):
        m = int(out.masked_m[le])
        y[le, :m] = f(first + le, out.hidden_states[le, :m]).to(torch.bfloat16)
    return DeepEPLLCombineInput(y, out.topk_ids, out.topk_weights)


def reference(x, ids, w):
    import torch
    out = torch.zeros(x.shape, dtype=torch.float32)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            out[t] += float(w[t, k]) * f(int(ids[t, k]), x[t])
    return out


def run_mode(mode, link, seed, rank, world):
    import torch
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    from epd.sglang import EpdTboDispatcher
    base, extra = divmod(E, world)
    first, local = rank * base + min(rank, extra), base + (1 if rank < extra else 0)
    d = EpdTboDispatcher(link, 2, mode=mode, world_size=world, rank=rank, num_experts=E, num_local_experts=local,
                         top_k=TOP_K, hidden_size=HIDDEN, params_dtype=torch.bfloat16, max_tokens_per_rank=MAX_TOKENS)
    for s, (n0, n1) in enumerate(STEPS):
        cases = [inputs(seed, s, sub, rank, ns[rank]) for sub, ns in ((0, n0), (1, n1))]
        for sub, (x, ids, w) in enumerate(cases):
            d.dispatch_a(tbo_subbatch_index=sub, hidden_states=x,
                         topk_output=StandardTopKOutput(topk_weights=w, topk_ids=ids, router_logits=None))
        outs = {}
        for sub in (1, 0):  # waits in the other order
            outs[sub] = d.dispatch_b(tbo_subbatch_index=sub)
        for sub in (0, 1):
            d.combine_a(tbo_subbatch_index=sub, combine_input=experts(mode, outs[sub], first, world))
        for sub in (1, 0):
            got = d.combine_b(tbo_subbatch_index=sub)
            x, ids, w = cases[sub]
            ref = reference(x, ids, w)
            ctx = f"{mode} step {s} sub-batch {sub} (n={x.shape[0]}, seed {seed})"
            if tuple(got.shape) != tuple(ref.shape):
                raise AssertionError(f"{ctx}: output shape {tuple(got.shape)}, want {tuple(ref.shape)}")
            err = (got.float() - ref).abs().max().item() if ref.numel() else 0.0
            tol = 0.02 * max(1.0, ref.abs().max().item() if ref.numel() else 1.0)
            if not err <= tol:
                raise AssertionError(f"{ctx}: max |out - reference| = {err:.4g} > {tol:.4g}")


def main(argv):
    sock, rank, world, seed = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    import torch
    torch.set_num_threads(1)
    from epd.vllm._link import Link
    link = Link.attach(rank, None, sock)
    try:
        for mode in ("normal", "low_latency"):
            run_mode(mode, link, seed, rank, world)
    finally:
        Link.detach()
    print(f"OK rank {rank}", flush=True)
    return 0


if __name__ == "__main__":
    import rank_main  # beside this script
    rank_main.run(main)
