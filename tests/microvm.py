"""A micro-VM made directly with KVM ioctls: ground truth for the path verifier.

One vCPU, 2 MiB of guest memory, identity-mapped with one 2 MiB page, 64-bit long mode (PVM, the
software KVM on some cloud hosts, runs only 64-bit guests; VMX/SVM run it as well). The guest
has one tiny code block per phase; each runs an instruction N times and stops with HLT:

    out:   1: out dx, al ; dec rsi ; jnz 1b ; hlt        (dx = port, al = 0x42)
    cpuid: 1: xor eax, eax ; cpuid ; dec rsi ; jnz 1b ; hlt

Without an in-kernel irqchip, HLT returns to us as KVM_EXIT_HLT; KVM_EXIT_IO is answered by
re-entering (the run loop counts them). So a phase of N OUTs costs exactly N userspace exits
(reason IO) plus one (reason HLT, the stop), and a phase of N CPUIDs exactly one (the stop).

The thread that calls `run_phase()` is the vCPU thread: `tid` is its `threading.get_native_id()`
(set by `MicroVM(...)` for the creating thread; call all methods from one thread).

    with MicroVM() as vm, ExitCounter([vm.tid]) as tr:
        a = tr.snapshot(); vm.run_phase("out", 1000, port=0xE9); b = tr.snapshot()
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass

from exitlat.errors import ExitlatError

KVM_DEV = "/dev/kvm"

# ioctl numbers (include/uapi/linux/kvm.h; _IO/_IOR/_IOW with KVMIO = 0xAE)
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46   # _IOW(0xAE, 0x46, 32 bytes)
KVM_RUN = 0xAE80
KVM_GET_REGS = 0x8090AE81                 # _IOR(0xAE, 0x81, struct kvm_regs = 144 bytes)
KVM_SET_REGS = 0x4090AE82
KVM_GET_SREGS = 0x8138AE83                # struct kvm_sregs = 312 bytes
KVM_SET_SREGS = 0x4138AE84

KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_NAMES = {0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 5: "HLT", 6: "MMIO", 8: "SHUTDOWN",
                  9: "FAIL_ENTRY", 10: "INTR", 17: "INTERNAL_ERROR"}

MEM_SIZE = 0x200000
PML4, PDPT, PD = 0x2000, 0x3000, 0x4000
STACK_TOP = 0x1F0000
OUT_VALUE = 0x42

# Guest code per phase: (guest physical address, bytes).
PHASES = {
    #        out dx,al ; dec rsi        ; jnz -6     ; hlt
    "out": (0x10000, bytes([0xEE, 0x48, 0xFF, 0xCE, 0x75, 0xFA, 0xF4])),
    #        xor eax,eax ; cpuid      ; dec rsi          ; jnz -9     ; hlt
    "cpuid": (0x10100, bytes([0x31, 0xC0, 0x0F, 0xA2, 0x48, 0xFF, 0xCE, 0x75, 0xF7, 0xF4])),
}

_REG_NAMES = ("rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags").split()


@dataclass
class PhaseResult:
    phase: str
    n: int
    io_exits: int           # KVM_EXIT_IO seen by the run loop
    other_exits: dict       # other KVM_RUN returns by KVM_EXIT_* name (the final HLT: {"HLT": 1})
    seconds: float          # wall time of the phase (all KVM_RUN calls)
    rsi_left: int           # guest loop counter at the stop (0 = all N iterations ran)


def kvm_usable() -> tuple[bool, str]:
    """Whether /dev/kvm can create a VM here."""
    try:
        fd = os.open(KVM_DEV, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"{KVM_DEV}: {e.strerror}"
    try:
        api = fcntl.ioctl(fd, KVM_GET_API_VERSION)
        if api != 12:
            return False, f"{KVM_DEV}: unexpected KVM API version {api}"
        vm = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        os.close(vm)
        return True, f"{KVM_DEV} usable (API {api})"
    except OSError as e:
        return False, f"{KVM_DEV}: KVM_CREATE_VM failed ({e.strerror})"
    finally:
        os.close(fd)


def _seg(buf: bytearray, index: int, selector: int, type_: int, long_: int, db: int) -> None:
    # struct kvm_segment: base u64, limit u32, selector u16, type, present, dpl, db, s, l, g,
    # avl, unusable, padding (u8 each) = 24 bytes
    struct.pack_into("QIHBBBBBBBBBB", buf, index * 24, 0, 0xFFFFFFFF, selector, type_, 1, 0, db,
                     1, long_, 1, 0, 0, 0)


class MicroVM:
    """A one-vCPU VM that runs the `PHASES` guest code blocks. Use from one thread."""

    def __init__(self):
        self.tid = threading.get_native_id()
        self._kvm = self._vm = self._vcpu = -1
        self._mem = self._run = None
        try:
            self._setup()
        except OSError as e:
            self.close()
            raise ExitlatError(f"micro-VM: KVM setup failed ({e.strerror or e})") from None
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        try:
            self._kvm = os.open(KVM_DEV, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise ExitlatError(f"micro-VM: cannot open {KVM_DEV} ({e.strerror})") from None
        if fcntl.ioctl(self._kvm, KVM_GET_API_VERSION) != 12:
            raise ExitlatError("micro-VM: unexpected KVM API version")
        self._vm = fcntl.ioctl(self._kvm, KVM_CREATE_VM, 0)
        self._mem = mmap.mmap(-1, MEM_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        host = ctypes.addressof(ctypes.c_char.from_buffer(self._mem))
        fcntl.ioctl(self._vm, KVM_SET_USER_MEMORY_REGION,
                    struct.pack("IIQQQ", 0, 0, 0, MEM_SIZE, host))
        # identity map 0..2 MiB: PML4[0] -> PDPT[0] -> PD[0] = 2 MiB page (P|RW|PS)
        struct.pack_into("Q", self._mem, PML4, PDPT | 0x3)
        struct.pack_into("Q", self._mem, PDPT, PD | 0x3)
        struct.pack_into("Q", self._mem, PD, 0x0 | 0x83)
        for addr, code in PHASES.values():
            self._mem[addr:addr + len(code)] = code
        self._vcpu = fcntl.ioctl(self._vm, KVM_CREATE_VCPU, 0)
        size = fcntl.ioctl(self._kvm, KVM_GET_VCPU_MMAP_SIZE)
        self._run = mmap.mmap(self._vcpu, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        sregs = bytearray(312)
        fcntl.ioctl(self._vcpu, KVM_GET_SREGS, sregs)
        _seg(sregs, 0, 0x08, 0xB, 1, 0)                   # CS: 64-bit code, DPL 0
        for i in (1, 2, 3, 4, 5):                         # DS ES FS GS SS: data
            _seg(sregs, i, 0x10, 0x3, 0, 1)
        # cr0 = PG|AM|WP|NE|ET|MP|PE, cr2, cr3, cr4 = PAE, cr8, efer = LMA|LME
        struct.pack_into("6Q", sregs, 224, 0x80050033, 0, PML4, 0x20, 0, 0x500)
        fcntl.ioctl(self._vcpu, KVM_SET_SREGS, bytes(sregs))

    def _check_thread(self) -> None:
        if threading.get_native_id() != self.tid:
            raise ExitlatError("micro-VM: run_phase() must be called from the thread that created the VM")

    def _set_regs(self, **regs: int) -> None:
        values = dict.fromkeys(_REG_NAMES, 0)
        values.update(regs)
        values["rflags"] = 0x2
        fcntl.ioctl(self._vcpu, KVM_SET_REGS, struct.pack("18Q", *(values[n] for n in _REG_NAMES)))

    def regs(self) -> dict:
        buf = bytearray(144)
        fcntl.ioctl(self._vcpu, KVM_GET_REGS, buf)
        return dict(zip(_REG_NAMES, struct.unpack("18Q", buf)))

    def run_phase(self, phase: str, n: int, port: int = 0xE9, timeout: float = 60.0) -> PhaseResult:
        """Run `n` iterations of `phase` ("out" or "cpuid") and return at its HLT."""
        if phase not in PHASES:
            raise ExitlatError(f"micro-VM: unknown phase {phase!r} ({', '.join(PHASES)})")
        if not isinstance(n, int) or not 1 <= n <= 1 << 40:
            raise ExitlatError(f"micro-VM: n must be a positive integer, got {n!r}")
        if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise ExitlatError(f"micro-VM: port must be 0..0xffff, got {port!r}")
        if self._vcpu < 0:
            raise ExitlatError("micro-VM: closed")
        self._check_thread()
        rip, code = PHASES[phase]
        self._set_regs(rax=OUT_VALUE, rdx=port, rsi=n, rsp=STACK_TOP, rip=rip)
        run, io, other = self._run, 0, {}
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.ioctl(self._vcpu, KVM_RUN, 0)
            except InterruptedError:
                continue
            except OSError as e:
                raise ExitlatError(f"micro-VM: KVM_RUN failed ({e.strerror})") from None
            reason = struct.unpack_from("I", run, 8)[0]
            if reason == KVM_EXIT_IO:
                direction, size, p, count = struct.unpack_from("BBHI", run, 32)
                if direction != 1 or p != port or size != 1:
                    raise ExitlatError(f"micro-VM: unexpected I/O exit (dir {direction} port {p:#x})")
                io += 1
                if time.monotonic() > deadline:
                    raise ExitlatError(f"micro-VM: phase {phase} did not finish within {timeout:.0f} s")
                continue
            name = KVM_EXIT_NAMES.get(reason, str(reason))
            other[name] = other.get(name, 0) + 1
            if reason == KVM_EXIT_HLT:
                break
            raise ExitlatError(f"micro-VM: unexpected exit KVM_EXIT_{name} in phase {phase}")
        seconds = time.perf_counter() - t0
        r = self.regs()
        expect_rip = rip + len(code)
        if r["rip"] != expect_rip:
            raise ExitlatError(f"micro-VM: stopped at rip {r['rip']:#x}, expected {expect_rip:#x}")
        return PhaseResult(phase, n, io, other, seconds, r["rsi"])

    def close(self) -> None:
        for attr in ("_run", "_mem"):
            m = getattr(self, attr)
            if m is not None:
                try:
                    m.close()
                except BufferError:
                    pass   # a ctypes view may still pin it; freed with the process
                setattr(self, attr, None)
        for attr in ("_vcpu", "_vm", "_kvm"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    def __enter__(self) -> "MicroVM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_microvm_phases(n: int, port: int = 0xE9, counter=None, phases=("out", "cpuid")) -> dict:
    """Run the phases in the calling thread; with `counter` (an ExitCounter started on
    [threading.get_native_id()]), also return each phase's window of counts.

    Returns {phase: {"result": PhaseResult, "window": ExitCounts | None}}.
    """
    out = {}
    with MicroVM() as vm:
        for ph in phases:
            before = counter.snapshot() if counter is not None else None
            res = vm.run_phase(ph, n, port)
            window = counter.snapshot() - before if counter is not None else None
            out[ph] = {"result": res, "window": window}
    return out
