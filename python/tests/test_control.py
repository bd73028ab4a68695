"""Control plane of the epd package against a real daemon: ctypes only, no torch needed."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import epd
from conftest import tool_path


def spec(**over):
    s = dict(name="ctl", generation=1, world_size=1, rank=0, num_experts=6, top_k=2, hidden=40, dtype="fp32",
             max_tokens_per_rank=12, timeout_ms=10000)
    s.update(over)
    return s


def epctl_groups(sock):
    out = subprocess.run([tool_path("EPD_EPCTL", "tools/epctl"), "--socket", sock, "--json", "groups"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_connect_and_info(daemon):
    with epd.connect(daemon.socket) as c:
        info = c.info
        assert info.daemon_pid == daemon.pid
        assert info.protocol[0] >= 1
        assert info.daemon_version
        for cap in (epd.Capability.HOST_EXECUTOR, epd.Capability.RANK_MAJOR, epd.Capability.EXPERT_MAJOR):
            assert cap in info.capabilities
        assert c.handle != 0
    assert c.handle == 0
    with pytest.raises(epd.EpdError) as e:
        c.info
    assert e.value.status == epd.Status.INVALID_ARGUMENT


def test_connect_without_daemon_names_the_socket(tmp_path):
    path = str(tmp_path / "none.sock")
    with pytest.raises(epd.EpdError) as e:
        epd.connect(path)
    assert e.value.status == epd.Status.DAEMON_LOST
    assert path in e.value.message


def test_connect_uses_epd_socket_env(daemon, monkeypatch):
    monkeypatch.setenv("EPD_SOCKET", daemon.socket)
    with epd.connect() as c:
        assert c.info.daemon_pid == daemon.pid


def test_spec_defaults_are_the_c_defaults():
    d = epd.spec_defaults()
    assert d["slots"] == 2 and d["timeout_ms"] == 30000
    assert d["dtype"] == epd.DType.BF16 and d["layout"] == epd.Layout.RANK_MAJOR
    assert d["mode"] == epd.Mode.HIGH_THROUGHPUT and d["dispatch_quant"] == epd.Quant.NONE
    assert d["placement"] is None and d["expert_owner"] is None
    assert d["executor"] == epd.Executor.DAEMON


def test_join_with_keyword_arguments(daemon):
    with epd.connect(daemon.socket) as c:
        g = c.join(**spec(layout="expert_major", slots=3, expert_owner=[0] * 6))
        assert g.handle != 0 and not g.is_gpu
        assert g.spec["layout"] == epd.Layout.EXPERT_MAJOR and g.spec["slots"] == 3
        assert g.spec["dtype"] == epd.DType.FP32 and g.spec["expert_owner"] == [0] * 6
        assert g.spec["mode"] == epd.Mode.HIGH_THROUGHPUT  # a C default
        assert g.status() == epd.Status.OK
        groups = epctl_groups(daemon.socket)
        assert any(x.get("name") == "ctl" for x in _group_rows(groups)), groups
        g.leave()


def _group_rows(doc):
    rows = doc.get("groups", doc) if isinstance(doc, dict) else doc
    return rows if isinstance(rows, list) else []


@pytest.mark.parametrize("over, field", [
    (dict(top_k=0), "top_k"),
    (dict(top_k=7), "top_k"),
    (dict(hidden=0), "hidden"),
    (dict(slots=9), "slots"),
    (dict(rank=1), "rank"),
    (dict(name="bad name!"), "name"),
    (dict(max_tokens_per_rank=0), "max_tokens_per_rank"),
    (dict(layout="diagonal"), "layout"),
    (dict(dtype="int8"), "dtype"),
    (dict(placement=[(0, -1), (0, -1)]), "placement"),
    (dict(expert_owner=[0, 0]), "expert_owner"),
    (dict(num_experts=2**31), "num_experts"),
    (dict(name="x" * 64), "name"),
    (dict(executor="inline"), "executor = inline needs every rank on one GPU"),
    (dict(executor="sideways"), "executor"),
])
def test_bad_spec_raises_with_status_and_field(daemon, over, field):
    with epd.connect(daemon.socket) as c:
        with pytest.raises(epd.EpdError) as e:
            c.join(**spec(**over))
    assert e.value.status == epd.Status.INVALID_SPEC
    assert field in e.value.message, e.value.message


def test_fp8_alignment_has_its_own_status():
    with pytest.raises(epd.EpdError) as e:
        epd.workspace_bytes(**spec(dtype="bf16", dispatch_quant="fp8", hidden=100))
    assert e.value.status == epd.Status.FP8_ALIGNMENT and "hidden" in e.value.message


def test_unknown_field_is_a_type_error(daemon):
    with epd.connect(daemon.socket) as c:
        with pytest.raises(TypeError, match="topk"):
            c.join(**spec(topk=2))


def test_workspace_bytes_equal_what_the_daemon_holds(daemon):
    world = 3
    s = dict(spec(world_size=world, num_experts=7, top_k=3, hidden=24, max_tokens_per_rank=5, slots=3),
             name="wsb", timeout_ms=10000)
    expected = epd.workspace_bytes(**s)
    assert expected > 0
    assert epd.workspace_bytes(**s, node=0, gpu=0) == 0  # no rank placed on GPU 0
    # the bytes grow with every field that sizes the layout
    assert epd.workspace_bytes(**dict(s, max_tokens_per_rank=6)) > expected
    assert epd.workspace_bytes(**dict(s, layout="expert_major")) != expected
    code = ("import epd, sys; c = epd.connect(sys.argv[1]); "
            "g = c.join(name='wsb', generation=1, world_size=3, rank=int(sys.argv[2]), num_experts=7, top_k=3, "
            "hidden=24, dtype='fp32', max_tokens_per_rank=5, slots=3, timeout_ms=10000); "
            "sys.stdin.read(); g.leave()")
    procs = [subprocess.Popen([sys.executable, "-c", code, daemon.socket, str(r)], stdin=subprocess.PIPE,
                              env=dict(os.environ)) for r in (1, 2)]
    try:
        with epd.connect(daemon.socket) as c:
            g = c.join(**dict(s, rank=0))
            rows = [x for x in _group_rows(epctl_groups(daemon.socket)) if x.get("name") == "wsb"]
            assert len(rows) == 1, rows
            assert rows[0]["workspace_bytes"] == expected
            sizes = _daemon_memfd_sizes(daemon.pid, "wsb")
            assert sizes and set(sizes) == {expected}, (sizes, expected)  # the memfd the daemon maps
            g.leave()
    finally:
        for p in procs:
            p.stdin.close()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0]


def _daemon_memfd_sizes(pid, group):
    """Sizes of the daemon's open memfds named after `group` (its workspace: memfd 'epd-ws-<name>')."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("/memfd:") and f"-{group} " in target + " ":
                out.append(os.stat(f"/proc/{pid}/fd/{fd}").st_size)
        except OSError:
            continue
    return out


def test_leave_is_final_and_idempotent(daemon):
    with epd.connect(daemon.socket) as c:
        with c.join(**spec(name="lv")) as g:
            h = g.handle
            assert h != 0
        assert g.handle == 0
        g.leave()
        with pytest.raises(epd.EpdError) as e:
            g.views(0)
        assert e.value.status == epd.Status.NOT_JOINED
        # the rank can join again after leaving
        g2 = c.join(**spec(name="lv"))
        assert g2.handle != 0
        g2.leave()


def test_bad_slot_is_refused(daemon):
    with epd.connect(daemon.socket) as c:
        g = c.join(**spec(name="slot"))
        with pytest.raises(epd.EpdError) as e:
            g.views(2)
        assert e.value.status == epd.Status.BAD_SLOT and "slot = 2" in e.value.message
        g.leave()


def test_library_search_order_and_missing_library_names_what_was_tried(tmp_path, monkeypatch):
    from epd import _lib
    assert _lib.library_path()
    monkeypatch.setenv("EPD_CLIENT_LIBRARY", "/x/libepd-client.so.0")
    labels = [label for label, _ in _lib._candidates()]
    assert labels[0] == "$EPD_CLIENT_LIBRARY" and labels[-1] == "system loader"
    assert "build tree" in labels
    env = dict(os.environ, EPD_CLIENT_LIBRARY=str(tmp_path / "nope.so"))
    code = ("import epd._lib as l\n"
            "l._candidates = (lambda orig: (lambda: [c for c in orig() if c[0] == '$EPD_CLIENT_LIBRARY']))"
            "(l._candidates)\n"
            "try:\n    l.load()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "EpdError" in out.stdout and "nope.so" in out.stdout and "no such file" in out.stdout, out
