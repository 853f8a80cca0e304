"""The timed window's "tracing off" check (exitlat/verify/trace/tracingstate.py) on fake tracefs trees
laid out as the kernel's (one per thing that must be caught), and once on this host's tracefs."""

import os
import time
from pathlib import Path

import pytest

from exitlat.run.windows import TimedWindow, tracing_state
from exitlat.verify.trace.tracefs import find_tracefs
from exitlat.verify.trace.tracingstate import LIMITS, check_tracing

EVENTS = {"kvm": ("kvm_exit", "kvm_entry"), "sched": ("sched_switch", "sched_waking"),
          "syscalls": ("sys_enter_ioctl", "sys_exit_ioctl"), "msr": ("write_msr",),
          "probe": ("do_sys_openat2",)}


def _buffer(buf: Path) -> None:
    for group, events in EVENTS.items():
        for ev in events:
            d = buf / "events" / group / ev
            d.mkdir(parents=True)
            (d / "enable").write_text("0\n")
            (d / "trigger").write_text("# Available triggers:\n# traceon traceoff snapshot stacktrace hist\n")
    (buf / "set_event").write_text("")
    (buf / "current_tracer").write_text("nop\n")
    (buf / "tracing_on").write_text("1\n")
    (buf / "set_ftrace_filter").write_text("#### all functions enabled ####\n")


def fake_tracefs(tmp_path, instances=("exitlat-1-0",)) -> Path:
    """A quiet tracefs: nothing enabled, no tracer, no hooked function."""
    root = tmp_path / "tracing"
    _buffer(root)
    for name in instances:
        _buffer(root / "instances" / name)
    (root / "enabled_functions").write_text("")
    (root / "dynamic_events").write_text("")
    (root / "kprobe_profile").write_text("")
    (root / "uprobe_profile").write_text("")
    return root


def enable(buf: Path, group: str, event: str, trigger: str | None = None) -> None:
    """As the kernel shows an enabled event: enable "1" (a trigger alone: "0*", soft mode), a
    set_event line, the trigger in its trigger file."""
    d = buf / "events" / group / event
    d.mkdir(parents=True, exist_ok=True)
    (d / "enable").write_text("0*\n" if trigger else "1\n")
    if trigger:
        (d / "trigger").write_text(trigger + " [active]\n")
    with open(buf / "set_event", "a") as f:
        f.write(f"{group}:{event}\n")


def check(root: Path, tmp_path) -> list:
    """check_tracing of a fake tree, without this host's debugfs and /proc/sys files."""
    return check_tracing(root, kprobes_list=tmp_path / "no-debugfs", stack_tracer=tmp_path / "none")


def test_quiet_tracefs_is_off_and_says_what_it_read(tmp_path):
    root = fake_tracefs(tmp_path)
    got = check(root, tmp_path)
    assert got == []
    assert "set_event (top buffer and 1 instance)" in got.checked
    assert "enabled_functions" in got.checked and "kprobe_profile" in got.checked
    assert set(LIMITS) <= set(got.limits)
    assert any("kprobes/list" in lim for lim in got.limits)      # debugfs not there: named


def test_function_tracer_is_caught(tmp_path):
    root = fake_tracefs(tmp_path)
    (root / "current_tracer").write_text("function\n")
    (root / "tracing_on").write_text("0\n")               # the hooks stay with tracing_on 0
    assert check(root, tmp_path) == ["current_tracer: function (tracing_on 0)"]


def test_function_tracer_in_an_instance_is_caught(tmp_path):
    root = fake_tracefs(tmp_path)
    (root / "instances/exitlat-1-0/current_tracer").write_text("function_graph\n")
    (root / "instances/exitlat-1-0/set_ftrace_filter").write_text("vmx_vcpu_run\n")
    assert check(root, tmp_path) == ["instances/exitlat-1-0: current_tracer: function_graph "
                                   "(tracing_on 1, limited to 1 functions (set_ftrace_filter))"]


def test_function_command_with_nop_tracer_is_caught(tmp_path):
    root = fake_tracefs(tmp_path)
    (root / "set_ftrace_filter").write_text("vmx_vcpu_run:traceoff:unlimited\n")
    assert check(root, tmp_path) == ["set_ftrace_filter: vmx_vcpu_run:traceoff:unlimited"]


def test_perf_probe_group_enabled_is_caught(tmp_path):
    root = fake_tracefs(tmp_path)
    (root / "dynamic_events").write_text("p:probe/do_sys_openat2 do_sys_openat2\n")
    enable(root, "probe", "do_sys_openat2")
    assert check(root, tmp_path) == ["probe/do_sys_openat2"]


def test_syscalls_in_another_instance_are_caught(tmp_path):
    root = fake_tracefs(tmp_path, instances=("exitlat-1-0", "someone"))
    enable(root / "instances/someone", "syscalls", "sys_enter_ioctl")
    enable(root, "msr", "write_msr")
    assert check(root, tmp_path) == ["msr/write_msr", "instances/someone: syscalls/sys_enter_ioctl"]


def test_hist_trigger_on_a_sched_event_is_caught(tmp_path):
    root = fake_tracefs(tmp_path)
    enable(root, "sched", "sched_switch", trigger="hist:keys=next_pid:vals=hitcount:size=2048")
    assert check(root, tmp_path) == ["sched/sched_switch (trigger: hist)"]


def test_enabled_functions_are_caught_but_livepatch_is_not_tracing(tmp_path):
    root = fake_tracefs(tmp_path)
    (root / "enabled_functions").write_text(
        "schedule (1) R I   tramp: 0xffffffffc0201000 (klp_ftrace_handler+0x0/0x1a0) ->klp_ftrace_handler+0x0/0x1a0\n")
    assert check(root, tmp_path) == []
    with open(root / "enabled_functions", "a") as f:
        f.write("vmx_vcpu_run (1) R   D   tramp: 0xffffffffc0203000 (bpf_trampoline_6442+0x0/0x100)\n")
    assert check(root, tmp_path) == ["enabled_functions: 1 functions hooked (e.g. vmx_vcpu_run)"]


def test_bpf_lsm_hooks_are_policy_not_tracing(tmp_path):
    root = fake_tracefs(tmp_path)
    (root / "enabled_functions").write_text(
        "bpf_lsm_file_open (1)           D      tramp: 0xffffffffc0205000 (bpf_trampoline_6442+0x0/0x100)\n")
    got = check(root, tmp_path)
    assert got == [] and any("BPF LSM hooks" in c and "bpf_lsm_file_open" in c for c in got.checked)


def test_unreadable_enabled_functions_is_a_named_limit(tmp_path):
    root = fake_tracefs(tmp_path)
    (root / "enabled_functions").unlink()
    (root / "enabled_functions").mkdir()                  # reading it fails (EISDIR), as EPERM would
    got = check(root, tmp_path)
    assert got == [] and "enabled_functions" not in got.checked
    assert any(lim.startswith("enabled_functions is not readable") for lim in got.limits)


def test_armed_kprobe_in_debugfs_and_stack_tracer_are_caught(tmp_path):
    root = fake_tracefs(tmp_path)
    kl = tmp_path / "kprobes_list"
    kl.write_text("ffffffffc0a1b2c0  r  vmx_vcpu_run+0x0    [FTRACE]\n"
                  "ffffffffc0a1b300  k  do_sys_openat2+0x0    [DISABLED][FTRACE]\n")
    st = tmp_path / "stack_tracer_enabled"
    st.write_text("1\n")
    got = check_tracing(root, kprobes_list=kl, stack_tracer=st)
    assert got == ["stack tracer (/proc/sys/kernel/stack_tracer_enabled)",
                   "kprobes/list: vmx_vcpu_run+0x0 (r) armed"]
    assert "debugfs kprobes/list" in got.checked


def test_unreadable_set_event_is_unknown(tmp_path):
    root = fake_tracefs(tmp_path)
    (root / "instances/exitlat-1-0/set_event").unlink()
    assert check(root, tmp_path) is None
    assert tracing_state(tmp_path / "nothing") is None            # the callers' entry point


def test_probe_that_fired_through_perf_fails_the_window(tmp_path):
    """A probe event used through perf_event_open is enabled nowhere in tracefs: only its hit count
    in kprobe_profile moves."""
    root = fake_tracefs(tmp_path)
    (root / "kprobe_profile").write_text("  do_sys_openat2                          12               0\n")
    before = check(root, tmp_path)
    (root / "kprobe_profile").write_text("  do_sys_openat2                          40               0\n")
    w = TimedWindow(kvm_stats={}, tracing_before=before, tracing_after=check(root, tmp_path))
    assert before == [] and w.tracing == "on"
    assert w.enabled == ["kprobe_profile: do_sys_openat2 fired 28 times"]
    quiet = TimedWindow(kvm_stats={}, tracing_before=before, tracing_after=check(root, tmp_path))
    quiet.tracing_before = check(root, tmp_path)
    assert quiet.tracing == "off"


def test_timed_window_stores_what_was_checked_and_the_limits(tmp_path):
    root = fake_tracefs(tmp_path)
    w = TimedWindow(kvm_stats={"exits": 1}, tracing_before=check(root, tmp_path),
                    tracing_after=check(root, tmp_path))
    d = w.to_dict()
    assert d["tracing"] == "off" and d["tracing_enabled"] == []
    assert "set_event (top buffer and 1 instance)" in d["tracing_checked"]
    assert set(LIMITS) <= set(d["tracing_limits"])
    enable(root / "instances/exitlat-1-0", "raw_syscalls", "sys_enter")
    w.tracing_after = check(root, tmp_path)
    assert w.tracing == "on"
    assert "instances/exitlat-1-0: raw_syscalls/sys_enter" in w.tracing_problem()
    plain = TimedWindow(tracing_before=[], tracing_after=[]).to_dict()      # a window built by hand
    assert plain["tracing_checked"] == [] and plain["tracing_limits"] == []


def test_real_tracefs_is_read_fast():
    """This host's tracefs (with ~2300 events on the dev host): read, and well under 50 ms (the
    bench reads it twice per timed window, outside the timed loop). What is enabled here is not
    asserted: other test runs may hold a traced window open."""
    root = find_tracefs(mount=False)
    if root is None or not os.access(root / "set_event", os.R_OK):
        pytest.skip("no readable tracefs")
    tracing_state()
    t0 = time.perf_counter()
    for _ in range(10):
        got = tracing_state()
    per_call = (time.perf_counter() - t0) / 10
    assert got is not None and "set_event" in " ".join(got.checked)
    assert per_call < 0.05, f"{per_call * 1e3:.1f} ms per check"
    print(f"\ntracing_state on {root}: {per_call * 1e3:.2f} ms, enabled: {list(got)}")
