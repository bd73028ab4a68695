"""The epd SGLang dispatcher against SGLang 0.5.23's own classes, through a real epd (host executor).

Two worker processes (test_engines_sglang_rank.py) drive EpdTboDispatcher
with SGLang's StandardTopKOutput, DeepEP output and combine-input types, in
both modes and both sub-batches. Not tested here: a running SGLang server (its
full dependency set does not install on this machine), so the plugin's hook on
create_moe_dispatcher is checked only for being registered.
Skips, saying why, when torch, SGLang or the epd ops extension is missing.
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

from conftest import require_torch_ops, run_workers  # noqa: E402

torch = require_torch_ops("SGLang", "sglang", "sglang==0.5.23")
import epd  # noqa: E402

WORLD = 2
HERE = Path(__file__).resolve().parent


def test_dispatcher_through_epd(daemon):
    seed = random.randrange(1 << 30)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(HERE)) if p))
    argvs = [[sys.executable, str(HERE / "test_engines_sglang_rank.py"), daemon.socket, str(r), str(WORLD), str(seed)]
             for r in range(WORLD)]
    results = run_workers(argvs, 300, env=env)
    bad = [(r, rc, out) for r, (rc, out) in enumerate(results) if rc != 0 or f"OK rank {r}" not in out]
    assert not bad, f"seed {seed}:\n" + "\n".join(f"--- rank {r} (exit {rc}):\n{out[-4000:]}" for r, rc, out in bad)


def test_plugin_registers_hook(monkeypatch):
    plugin = pytest.importorskip("epd.sglang.plugin", reason="SGLang's dispatcher classes do not import here")
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    monkeypatch.delenv("SGLANG_EPD_MODE", raising=False)
    before = list(HookRegistry._hooks.get(plugin.TARGET, []))
    plugin.register()
    assert list(HookRegistry._hooks.get(plugin.TARGET, [])) == before
    monkeypatch.setenv("SGLANG_EPD_MODE", "low_latency")
    monkeypatch.setitem(HookRegistry._hooks, plugin.TARGET, list(before))
    plugin.register()
    hooks = HookRegistry._hooks[plugin.TARGET]
    assert any(t == HookType.AROUND and h is plugin.create_dispatcher_hook for t, h, *_ in hooks)
    monkeypatch.setenv("SGLANG_EPD_MODE", "fast")
    with pytest.raises(epd.EpdError, match="'fast' is not one of normal, low_latency"):
        plugin.register()
