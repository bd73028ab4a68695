#!/usr/bin/env python3
"""op_overhead.py — per-call host cost of the torch op layer over the raw C calls, GPU path.

One GPU group (world_size 1, GPU 0) through a real epd. Each variant enqueues
rounds of dispatch, dispatch_wait, combine, combine_wait on the current CUDA
stream; rounds are timed in chunks of --chunk (the stream is drained between
chunks, untimed, so the host never waits for the GPU: a chunk's operations
stay within the armed executor's depth of 8 per slot, and within a stream's
queue); the table shows the median over chunks, in ns per call, and each
variant's cost above the C loop, for each --executor (both by default):

  C loop         raw_calls.c, the four epd_group_*_async calls (compiled here with cc)
  ctypes         the same four calls from Python through ctypes
  torch.ops      torch.ops.epd.dispatch.default / ... (the OpOverloads, as a serving engine binds them)
  epd wrappers   epd.dispatch / ... (argument checks, EpdError translation)
  torch floor    torch.ops.epd.call_floor.default with dispatch's arguments, four
                 times a round: torch's own op call (argument parsing, the
                 dispatcher, stable-ABI boxing) with no work and no C call, so
                 "over C" of torch.ops minus this row is epd's own C++ layer

Usage: op_overhead.py [--socket S | --daemon PATH] [--rounds N] [--chunk K] [--executor daemon|inline]
       op_overhead.py --floor-only   (no GPU, no daemon: the torch floor row on CPU tensors, and
                                      torch.add's call on the same machine for scale)
Without --socket it starts the daemon (PATH, $EPD_DAEMON or <build>/daemon/epd)
in a temporary directory and ends it by pid.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket as sk
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import epd
from epd import _lib

REPO = Path(__file__).resolve().parents[2]


def start_daemon(binary):
    d = tempfile.mkdtemp(prefix="epd-bench.")
    sock, notify = os.path.join(d, "epd.sock"), os.path.join(d, "notify.sock")
    n = sk.socket(sk.AF_UNIX, sk.SOCK_DGRAM)
    n.bind(notify)
    n.settimeout(30)
    p = subprocess.Popen([binary, "--config", "", "--socket", sock, "--log-target", "stderr", "--log-level", "warn"],
                         env=dict(os.environ, NOTIFY_SOCKET=notify))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if b"READY=1" in n.recv(4096):
            return p, sock
    p.kill()
    raise SystemExit("epd did not report READY=1 within 30 s")


def build_c_loop(tmp):
    src = Path(__file__).resolve().parent / "raw_calls.c"
    out = os.path.join(tmp, "raw_calls.so")
    lib = _lib.library_path()
    cmd = ["cc", "-O2", "-shared", "-fPIC", "-I", str(REPO / "include"), str(src), "-o", out, lib]
    subprocess.run(cmd, check=True)
    f = ctypes.CDLL(out).epd_bench_rounds
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                  ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_int64)]
    return f


def timed_chunks(run_chunk, chunks, chunk):
    stream = torch.cuda.current_stream()
    per_call = []
    for i in range(chunks + 2):  # two warm-up chunks
        stream.synchronize()
        ns = run_chunk(chunk)
        if i >= 2:
            per_call.append(ns / (4 * chunk))
    stream.synchronize()
    return statistics.median(per_call), min(per_call)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket")
    ap.add_argument("--daemon", default=os.environ.get("EPD_DAEMON", str(REPO / "build" / "daemon" / "epd")))
    ap.add_argument("--rounds", type=int, default=20000)
    ap.add_argument("--chunk", type=int, default=2, help="rounds per timed chunk (2: 4 armed operations)")
    ap.add_argument("--executor", choices=("daemon", "inline"), action="append",
                    help="the group's executor (repeatable; default both)")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--floor-only", action="store_true")
    args = ap.parse_args()
    if args.floor_only:
        return floor_only(args)
    if not torch.cuda.is_available() or not epd.ops.available():
        print(f"skipped: needs a CUDA device and the ops extension ({epd.ops.load_error()})")
        return 0
    proc, sock = (None, args.socket) if args.socket else start_daemon(args.daemon)
    try:
        return run(sock, args)
    finally:
        if proc is not None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(10)


def floor_only(args):
    """torch's op call with dispatch's arguments (call_floor, CPU tensors) next to torch.add, ns per call."""
    if not epd.ops.available():
        print(f"skipped: needs the ops extension ({epd.ops.load_error()})")
        return 0
    n = args.tokens
    tok, x = torch.empty(1), torch.empty(n, 128)
    ids, w = torch.zeros(n, 2, dtype=torch.int32), torch.empty(n, 2)
    fl, add = torch.ops.epd.call_floor.default, torch.add

    def per_call(f, *a):
        best = []
        for _ in range(max(3, args.rounds // 2000)):
            t0 = time.perf_counter_ns()
            for _ in range(1000):
                f(*a)
            best.append((time.perf_counter_ns() - t0) / 1000)
        return statistics.median(best), min(best)
    print(f"torch {torch.__version__}, CPU tensors, ns per call (median / min over batches of 1000)")
    for name, (med, lo) in (("torch floor (call_floor)", per_call(fl, tok, 1, 0, x, ids, w, None, n)),
                            ("torch.add(a, b)", per_call(add, tok, tok))):
        print(f"{name:<26} {med:>8.0f} {lo:>8.0f}")
    return 0


def variants(g, x, ids, w, n, c_loop):
    """name -> function(k) enqueuing k rounds and returning the host ns they took."""
    stream = torch.cuda.current_stream().cuda_stream
    token, h, L = g.token(0), g.handle, _lib.load()
    d, dw, cb, cw = (getattr(torch.ops.epd, n).default for n in ("dispatch", "dispatch_wait", "combine", "combine_wait"))
    a = _lib.GpuDispatchArgs(ctypes.sizeof(_lib.GpuDispatchArgs), x.data_ptr(), ids.data_ptr(), w.data_ptr(), None, n)
    pa = ctypes.byref(a)

    def c_chunk(k):
        ns = ctypes.c_int64()
        rc = c_loop(h, 0, k, stream, x.data_ptr(), ids.data_ptr(), w.data_ptr(), n, ctypes.byref(ns))
        if rc:
            raise epd.EpdError(rc, _lib.group_error(h))
        return ns.value

    def ctypes_chunk(k):
        t0 = time.perf_counter_ns()
        for _ in range(k):
            rc = (L.epd_group_dispatch_async(h, 0, pa, stream) or L.epd_group_dispatch_wait_async(h, 0, stream) or
                  L.epd_group_combine_async(h, 0, 1, None, 0, stream) or L.epd_group_combine_wait_async(h, 0, stream))
            if rc:
                raise epd.EpdError(rc, _lib.group_error(h))
        return time.perf_counter_ns() - t0

    def ops_chunk(k):
        t0 = time.perf_counter_ns()
        for _ in range(k):
            d(token, h, 0, x, ids, w, None, n)
            dw(token, h, 0, 0)
            cb(token, h, 0, 1, None, 0)
            cw(token, h, 0, None, 0)
        return time.perf_counter_ns() - t0

    def wrapper_chunk(k):
        t0 = time.perf_counter_ns()
        for _ in range(k):
            epd.dispatch(g, 0, x, ids, w)
            epd.dispatch_wait(g, 0)
            epd.combine(g, 0, epd.WeightMode.ALREADY_APPLIED)
            epd.combine_wait(g, 0)
        return time.perf_counter_ns() - t0
    fl = torch.ops.epd.call_floor.default

    def floor_chunk(k):
        t0 = time.perf_counter_ns()
        for _ in range(k):
            fl(token, h, 0, x, ids, w, None, n)
            fl(token, h, 0, x, ids, w, None, n)
            fl(token, h, 0, x, ids, w, None, n)
            fl(token, h, 0, x, ids, w, None, n)
        return time.perf_counter_ns() - t0
    return [("C loop", c_chunk), ("ctypes", ctypes_chunk), ("torch.ops", ops_chunk), ("epd wrappers", wrapper_chunk),
            ("torch floor", floor_chunk)]


def run(sock, args):
    n, hidden, top_k = args.tokens, 128, 2
    print(f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {args.rounds} rounds of 4 calls, "
          f"chunks of {args.chunk}, {n} tokens")
    with epd.connect(sock) as c, tempfile.TemporaryDirectory() as tmp:
        c_loop = build_c_loop(tmp)
        for executor in args.executor or ["daemon", "inline"]:
            g = c.join(name=f"overhead-{executor}", generation=1, world_size=1, rank=0, placement=[(0, 0)], num_experts=4,
                       top_k=top_k, hidden=hidden, dtype="bf16", max_tokens_per_rank=n, timeout_ms=30000,
                       executor=executor)
            x = torch.randn(n, hidden, device="cuda").to(torch.bfloat16)
            ids = torch.stack([torch.arange(n) % 4, (torch.arange(n) + 1) % 4], 1).to(torch.int32).cuda()
            w = torch.rand(n, top_k, device="cuda")
            chunks = max(1, args.rounds // args.chunk)
            rows = [(name, *timed_chunks(f, chunks, args.chunk)) for name, f in variants(g, x, ids, w, n, c_loop)]
            g.status(None, 10000)
            g.leave()
            base = rows[0][1]
            print(f"executor = {executor}")
            print(f"{'variant':<14} {'median ns/call':>15} {'min ns/call':>12} {'over C (median)':>16}")
            for name, med, lo in rows:
                print(f"{name:<14} {med:>15.0f} {lo:>12.0f} {med - base:>16.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
