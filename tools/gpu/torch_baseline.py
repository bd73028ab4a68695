#!/usr/bin/env python3
"""Straightforward PyTorch dispatch + combine on one GPU: the baseline for epd_gpu_bench.

Same workloads as epd_gpu_bench (8 ranks on one GPU, hidden 7168, top-8 of 256
experts, rank_major rows ordered by (source rank, source token), uniform
routing): LL = 128 and HT = 4096 tokens per rank, bf16 and fp8-e4m3 (block-128
scales) dispatch, bf16 combine with fp32 accumulation. Dispatch = owner mask,
nonzero, index_select (plus per-block quantisation for fp8); combine =
index_add_ of the received rows back to their tokens. Each phase is timed with
CUDA events after a warm-up; the median is reported.

Usage: torch_baseline.py [--json FILE] [--iters N]
"""
import argparse
import json
import statistics

import torch

W, E, K, H = 8, 256, 8, 7168


def timed(fn, iters, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times) * 1e3  # microseconds


def workload(name, tokens, fp8, iters):
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(1234 + tokens)
    T = W * tokens
    x = (torch.rand(T, H, device=dev, generator=gen) * 6 - 3).to(torch.bfloat16)
    ids = torch.rand(T, E, device=dev, generator=gen).argsort(dim=1)[:, :K]
    owner = ids // (E // W)

    def quantize(rows):
        f = rows.float().view(rows.shape[0], H // 128, 128)
        scale = f.abs().amax(dim=-1, keepdim=True) / 448.0
        q = torch.where(scale > 0, f / scale, torch.zeros_like(f)).to(torch.float8_e4m3fn)
        return q.view(rows.shape[0], H), scale.view(rows.shape[0], H // 128)

    state = {}

    def dispatch():
        mask = torch.zeros(T, W, dtype=torch.bool, device=dev)
        mask.scatter_(1, owner, True)
        dest, tok = mask.t().nonzero(as_tuple=True)  # by destination, then (rank, token)
        if fp8:
            q, s = quantize(x)
            recv = (q.view(torch.uint8).index_select(0, tok), s.index_select(0, tok))
        else:
            recv = x.index_select(0, tok)
        state["tok"] = tok
        state["recv"] = recv
        return recv

    dispatch()
    tok = state["tok"]
    y = (torch.rand(tok.numel(), H, device=dev, generator=gen) * 2 - 1).to(torch.bfloat16)

    def combine():
        out = torch.zeros(T, H, dtype=torch.float32, device=dev)
        out.index_add_(0, tok, y.float())
        return out.to(torch.bfloat16)

    d_us = timed(dispatch, iters)
    c_us = timed(combine, iters)
    return {
        "workload": name,
        "tokens_per_rank": tokens,
        "dispatch": "fp8_e4m3" if fp8 else "bf16",
        "rows": int(tok.numel()),
        "dispatch_us": d_us,
        "combine_us": c_us,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_baseline: no CUDA device")
        raise SystemExit(77)
    results = []
    for fp8 in (False, True):
        results.append(workload("LL", 128, fp8, args.iters * 4))
        results.append(workload("HT", 4096, fp8, args.iters))
    doc = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "results": results}
    for r in results:
        print(f"torch {r['workload']:3s} {r['dispatch']:9s} rows {r['rows']:7d} "
              f"dispatch {r['dispatch_us']:10.1f} us  combine {r['combine_us']:10.1f} us")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)


if __name__ == "__main__":
    main()
