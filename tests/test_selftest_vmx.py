"""`invoke selftest --vendor intel`: the emulated VT-x host under Bochs, without booting it.

The machine's configuration and boot CD, the display client (against fake RFB servers, one of them
behaving like Docker's port proxy before Bochs listens), the vendor choice, the WRMSR TSC-deadline
verdict on VMX, the negative controls on VMX windows, the once-per-process symbol lookup, and the
real VMX trace text captured inside the Intel host (tests/fixtures/trace/captured-vmx-*).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from exitlat.errors import ExitlatError
from exitlat.paths import REPO_ROOT
from exitlat.selftest import bochs, controls, host
from exitlat.selftest.l1disk import render_init
from exitlat.selftest.cli import (apic_mode_problems, parse_vendor, render_text, selftest_main,
                                  timer_rows, vendor_problems)
from exitlat.verify.trace import kprobes
from exitlat.verify.trace.counts import ExitCounts

FIXTURES = Path(__file__).parent / "fixtures" / "trace"


# --- the machine ---------------------------------------------------------------------------------


def test_bochsrc_has_what_mattered():
    size = bochs.disk_bytes(256 << 20)
    assert size >= 256 << 20 and size % (16 * 63 * 512) == 0
    rc = bochs.bochsrc(size, console="selftest-l1-intel-x.log")
    for line in ("cpu: model=corei7_skylake_x, count=1", "ignore_bad_msrs=1", "pci: enabled=1, chipset=i440fx",
                 "ata0-master: type=cdrom, path=/work/l1.iso", "boot: cdrom", "clock: sync=none",
                 f"ata1-master: type=disk, mode=flat, path=/work/out.img, cylinders={size // (16 * 63 * 512)}, heads=16, spt=63",
                 "com1: enabled=1, mode=file, dev=/logs/selftest-l1-intel-x.log", "display_library: rfb",
                 "error: action=ignore", "panic: action=fatal"):
        assert line in rc, line
    assert "term" not in rc        # the term display sleeps 1 ms whenever the guest halts


def test_boot_cd_script_is_valid_sh_and_boots_l1_with_its_arguments(tmp_path):
    script = bochs.cd_script(" ".join(host.L1_KERNEL_ARGS))
    (tmp_path / "s.sh").write_text(script)
    assert subprocess.run(["sh", "-n", str(tmp_path / "s.sh")]).returncode == 0
    assert "-b isolinux/isolinux.bin" in script and "-boot-info-table" in script
    assert "APPEND console=ttyS0 panic=-1" in script and "SERIAL 0 115200" in script


def test_intel_timeouts_cover_bochs():
    amd, intel = host.vendor_timeouts("amd", 1500), host.vendor_timeouts("intel", 2400)
    assert intel.boot > amd.boot and intel.modules > amd.modules and intel.total == 2400


def _rfb_server(behaviour: list[str]) -> tuple[int, list, threading.Thread]:
    """A fake RFB server: for each connection, 'close' (as Docker's proxy before Bochs listens)
    or 'rfb33' (Bochs 2.7's RFB 3.3 handshake, then a framebuffer update to be drained)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    got: list = []

    def serve():
        for what in behaviour:
            conn, _ = srv.accept()
            if what == "close":
                conn.close()
                continue
            conn.sendall(b"RFB 003.003\n")
            got.append(conn.recv(12))
            conn.sendall((1).to_bytes(4, "big"))          # security: None
            got.append(conn.recv(1))                      # ClientInit
            conn.sendall(b"\0" * 24)                      # ServerInit, empty name
            conn.sendall(b"x" * 100_000)                  # what the client must drain
            conn.close()
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv.getsockname()[1], got, t


def test_rfb_client_retries_until_bochs_listens_and_drains():
    import time

    port, got, t = _rfb_server(["close", "close", "rfb33"])
    drain = bochs.RfbDrain("127.0.0.1", port)
    drain.connect(deadline=time.monotonic() + 20)
    t.join(10)
    assert got == [b"RFB 003.003\n", b"\x01"]
    drain.thread.join(10)
    assert not drain.thread.is_alive()
    drain.close()


def test_rfb_client_gives_up_with_one_line():
    import time

    port, _got, _t = _rfb_server(["close"] * 3)
    with pytest.raises(ExitlatError) as err:
        bochs.RfbDrain("127.0.0.1", port).connect(deadline=time.monotonic() + 1)
    assert "did not take a client" in str(err.value) and "\n" not in str(err.value)


def test_init_names_the_vendor_module():
    text = render_init(["usr/lib/modules/r/kvm-intel.ko"], "kvm_intel")
    assert "no /dev/kvm after kvm_intel" in text and "sleep 0.2" in text


# --- the vendor and kernel choices -----------------------------------------------------------------


def test_parse_vendor():
    assert parse_vendor(None) == ["amd"] and parse_vendor("intel") == ["intel"]
    assert parse_vendor("all") == ["amd", "intel"]
    with pytest.raises(ExitlatError, match="unknown --vendor 'arm'; choose amd, intel, all"):
        parse_vendor("arm")


def test_invoke_selftest_bad_vendor_and_kernel_are_one_line():
    for args, msg in ((["--vendor", "arm"], "error: unknown --vendor 'arm'; choose amd, intel, all"),
                      (["--kernel", "5.10"], "error: unknown --kernel '5.10'; pins.yaml names 6.1, 6.12")):
        res = subprocess.run([sys.executable, "-m", "invoke", "selftest", *args], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and res.stderr.strip() == msg, res.stderr
        assert "Traceback" not in res.stderr + res.stdout


# --- verdicts on VMX ------------------------------------------------------------------------------


def _counts(exits=None, userspace=None, pio=None, handled=None, hv=None):
    d = ExitCounts(exits or {}, userspace or {}, pio or {}, handled or {}, 0, "hist").to_dict()
    if hv is not None:
        d["hv_timer"] = hv
    return d


def _case(key, case, instr, path, counts, n=1000, port=None):
    return {"key": key, "case": case, "instruction": instr, "expected_path": path, "port": port,
            "verification": {"status": "passed", "detail": ""},
            "verification_window": {"iterations_requested": n, "backend": "hist", "counts": counts,
                                    "verdict": {"status": "passed", "iterations_total": n}}}


def vmx_doc(n=1000, timer="N"):
    console = {(0x3F8, "out"): 150}
    return {"run": {"exit_vendor": "intel", "core": 0, "pinned_threads": {"321": 0}},
            "host": {"kvm": {"parameters": {"kvm_intel.preemption_timer": timer}}},
            "cases": [
                _case("case1-r0", 1, "cpuid", "kvm", _counts({"CPUID": n, "IO_INSTRUCTION": 150}, {"IO": 150},
                                                             console, {"cpuid": n})),
                _case("case2-r0", 2, "outb", "qemu", _counts({"IO_INSTRUCTION": n + 150}, {"IO": n + 150},
                                                             {(0xE9, "out"): n, **console}), port=0xE9),
                _case("case3-r0", 3, "rdmsr", "kvm", _counts({"MSR_READ": n, "MSR_WRITE": 20, "IO_INSTRUCTION": 150},
                                                             {"IO": 150}, console,
                                                             {"msr_read": n, "msr_write": 20})),
                _case("case5-r0", 5, "wrmsr_tsc_deadline", "kvm",
                      _counts({"MSR_WRITE": n + 10, "IO_INSTRUCTION": 150}, {"IO": 150}, console,
                              {"msr_write": n + 10}, hv={"not_in_use": n})),
            ]}


def test_controls_fail_on_vmx_windows_read_as_write_by_reason():
    """On VMX an RDMSR is MSR_READ and a WRMSR is MSR_WRITE: the read-as-write control fails on the
    exit reason itself (on SVM only the kvm_msr event's read/write field tells them apart)."""
    from exitlat.verify.traced import verify_case

    windows = controls.windows_of("b", vmx_doc())
    assert {w.vendor for w in windows} == {"intel"}
    rows = {c["name"]: c for c in controls.run_controls(windows)}
    for name in ("outb-as-kvm", "cpuid-as-qemu", "lost-events", "qemu-extra-exit", "read-as-write"):
        assert rows[name]["baseline"] == "passed" and rows[name]["verdict"] == "failed", rows[name]
        assert rows[name]["ok"], rows[name]
    assert "MSR_WRITE" in rows["read-as-write"]["detail"]
    w = next(w for w in windows if w.instruction == "rdmsr")
    assert verify_case(w.counts, w.n, "kvm", "rdmsr", None, "intel")["status"] == "passed"
    assert rows["no-kvm-exit"]["verdict"] == "unverified" and rows["no-kvm-exit"]["ok"]


def test_tsc_deadline_verdict_says_why_the_fastpath_is_unavailable():
    rows = timer_rows({"wrmsr": vmx_doc()}, {"tsc_khz": 3_500_000.0})
    assert len(rows) == 1
    r = rows[0]
    assert r["timer"] == "hrtimer (software)" and r["expected_path"] == "kvm"
    assert "preemption_timer=N" in r["fastpath_unavailable"]
    assert "3500 MHz" in r["fastpath_unavailable"] and "429" in r["fastpath_unavailable"]
    text = render_text({"ok": True, "problems": [], "vendor": "intel", "kernel": "6.12", "timings": {},
                        "l1": {}, "cases": [], "controls": [], "bundles": {}, "console_log": "c",
                        "timer": rows})
    assert "fastpath unavailable: kvm_intel.preemption_timer=N" in text
    assert "emulated VT-x host (L1 under Bochs, kvm_intel)" in text


def test_vendor_problems_catch_the_wrong_host():
    assert vendor_problems("intel", {"kvm_module": "kvm_intel"}, {"x": vmx_doc()}) == []
    probs = vendor_problems("amd", {"kvm_module": "kvm_intel"}, {"x": vmx_doc()})
    assert "L1 loaded kvm_intel, not kvm_amd" in probs[0]
    assert "names its exits as 'intel', not 'amd'" in probs[1]


def test_apic_mode_problems_want_the_mode_each_run_booted():
    def doc(mode, *kinds):
        return {"guest": {"apic_mode": mode}, "cases": [{"instruction": k} for k in kinds]}
    assert apic_mode_problems({"k": doc("x2apic", "cpuid", "eoi"),
                               "x": doc("xapic", "xapic_self_ipi", "xapic_ipi_tpr")}) == []
    probs = apic_mode_problems({"k": doc("xapic", "cpuid"), "x": doc("x2apic", "xapic_self_ipi"),
                                "old": doc(None, "cpuid")})
    assert probs == ["k: the bundle says the guest's APIC ran in 'xapic' mode, not 'x2apic'",
                     "x: the bundle says the guest's APIC ran in 'x2apic' mode, not 'xapic'",
                     "old: the bundle says the guest's APIC ran in None mode, not 'x2apic'"]


# --- the kernel symbol lookup -----------------------------------------------------------------------


def test_kernel_symbols_are_read_once_per_process(tmp_path, monkeypatch):
    """A traced window opened in ~47 s under Bochs, most of it reading /proc/kallsyms (160 000
    lines) twice per window for the fastpath symbols: now once per process."""
    ks = tmp_path / "kallsyms"
    ks.write_text("ffffffffa0001000 T handle_fastpath_set_msr_irqoff\t[kvm]\n"
                  "ffffffffa0002000 t vmx_vcpu_run\t[kvm_intel]\n")
    reads = []
    real = kprobes._read_symbols
    monkeypatch.setattr(kprobes, "_read_symbols", lambda want, src: reads.append(1) or real(want, src))
    for _ in range(5):
        assert kprobes.kernel_symbols(["handle_fastpath_set_msr_irqoff", "nope"], kallsyms=ks) == \
            {"handle_fastpath_set_msr_irqoff": "kvm"}
        assert kprobes.fastpath_symbols(tracefs=tmp_path, kallsyms=ks) == ["handle_fastpath_set_msr_irqoff"]
    assert len(reads) == 2          # one per set of names, not one per call
    ks.write_text("ffffffffa0001000 T handle_fastpath_wrmsr\t[kvm]\n")   # another kernel's file
    assert kprobes.fastpath_symbols(tracefs=tmp_path, kallsyms=ks) == ["handle_fastpath_wrmsr"]


# --- real VMX text captured inside the emulated VT-x host -------------------------------------------

VMX = "captured-vmx-6.12"


def _expect(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.expect.json").read_text())


@pytest.mark.parametrize("name, reason, handler, n", [
    (f"{VMX}-cpuid-case1-timed", "CPUID", "cpuid", 110),
    (f"{VMX}-vmcall-case1-timed", "VMCALL", "hypercall", 110),       # CPL 3
    (f"{VMX}-msr-case3-timed", "MSR_READ", "msr_read", 110),
])
def test_captured_vmx_window_parses_to_what_was_counted(name, reason, handler, n):
    """A timed window of 100+10 iterations under kvm_intel, as L1's trace_pipe printed it: exactly
    n exits of the VMX reason and n handler events; userspace exits only for the console."""
    from exitlat.verify.trace.traceparse import parse_trace_text

    text = (FIXTURES / f"{name}.txt").read_text()
    assert text.startswith("# Captured inside the emulated VT-x host")
    got = parse_trace_text(text)
    assert got.unparsed == 0 and got.lost == 0
    expect = _expect(name)
    for key in ("exits", "userspace", "pio", "handled"):
        assert got.to_dict()[key] == expect[key], key
    assert got.exits[reason] == n and got.handled[handler] == n
    assert got.pio_count(0xE9) == 0 and set(got.userspace) <= {"IO"}
    if reason == "MSR_READ":          # the read is its own reason on VMX, not the write's
        assert got.exits.get("MSR_WRITE", 0) < n * 0.2


def test_captured_vmx_tsc_deadline_writes_are_msr_write_exits():
    from exitlat.verify.trace.traceparse import parse_trace_text

    name = f"{VMX}-wrmsr-case5-timed"
    got = parse_trace_text((FIXTURES / f"{name}.txt").read_text())
    assert got.unparsed == 0 and got.to_dict()["exits"] == _expect(name)["exits"]
    assert 110 <= got.exits["MSR_WRITE"] <= 130 and got.exits.get("MSR_READ", 0) <= 5
    assert got.handled["msr_write"] == got.exits["MSR_WRITE"]
    assert "kvm_msr: msr_write 6e0 = " in (FIXTURES / f"{name}.txt").read_text()   # IA32_TSC_DEADLINE


def test_captured_vmx_qemu_window_parses_to_what_was_counted():
    from exitlat.verify.trace.traceparse import parse_trace_text

    name = f"{VMX}-cpuid-case2-timed"
    got = parse_trace_text((FIXTURES / f"{name}.txt").read_text())
    expect = _expect(name)
    assert got.unparsed == 0
    for key in ("exits", "userspace", "pio", "handled"):
        assert got.to_dict()[key] == expect[key], key
    assert got.pio_count(0xE9, "out") == 110
    assert got.userspace["IO"] == got.exits["IO_INSTRUCTION"]


@pytest.mark.parametrize("run", ["cpuid", "vmcall", "msr", "wrmsr"])
def test_captured_vmx_hist_files_agree_with_the_trace_text(run):
    """The hist instance and the streamed one saw the same events: per VMX reason (decoded from
    the hist's exit_reason and isa keys), the hist counts equal the text's."""
    from exitlat.verify.trace.exitreasons import decode_exit_reason
    from exitlat.verify.trace.histparse import parse_hist

    prefix = f"{VMX}-{run}"
    expect = _expect(f"{prefix}-full")
    exits: dict = {}
    text = (FIXTURES / f"{prefix}-hist-kvm_exit.hist").read_text()
    assert text.startswith("# Captured inside the emulated VT-x host")
    entries, dropped = parse_hist(text)
    assert dropped == 0
    for keys, hits in entries:
        name = decode_exit_reason(int(keys["exit_reason"]), int(keys["isa"]))
        exits[name] = exits.get(name, 0) + hits
    assert exits == expect["exits"]
    entries, _ = parse_hist((FIXTURES / f"{prefix}-hist-kvm_entry.hist").read_text())
    assert sum(h for _k, h in entries) > 0


def test_captured_vmx_full_run_parses_completely():
    """A whole VMX run (L2 boot included: EPT violations and misconfigs, CR accesses, ...) parses
    without one unparsed line; its kvm_entry lines (the timeline's, not counted) are set aside."""
    import lzma

    from exitlat.verify.trace.traceparse import parse_trace_text

    text = lzma.decompress((FIXTURES / f"{VMX}-cpuid-full.txt.xz").read_bytes()).decode()
    lines = text.splitlines()
    entries = [l for l in lines if " kvm_entry: " in l]
    got = parse_trace_text("\n".join(l for l in lines if " kvm_entry: " not in l) + "\n")
    assert got.unparsed == 0 and got.lost == 0 and entries
    expect = _expect(f"{VMX}-cpuid-full")
    for key in ("exits", "userspace", "pio", "handled"):
        assert got.to_dict()[key] == expect[key], key
    assert got.exits["CPUID"] >= 420 and got.exits.get("EPT_VIOLATION", 0) > 0
