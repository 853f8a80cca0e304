"""The QEMU command line for a measurement run: one vCPU (two for the IPI kinds), -cpu host with invariant TSC, locked
memory, debugcon on the S port, the serial console and QMP on unix sockets in the run folder."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFiles:
    """Everything one VM run reads and writes, all inside one folder."""
    folder: Path

    @property
    def qmp(self) -> Path:
        return self.folder / "qmp.sock"

    @property
    def console(self) -> Path:
        return self.folder / "console.sock"

    @property
    def disk(self) -> Path:
        return self.folder / "samples.img"

    @property
    def debugcon(self) -> Path:
        return self.folder / "debugcon.out"


@dataclass(frozen=True)
class QemuConfig:
    build: Path          # the build folder (bzImage, initramfs.cpio.gz, qemu/)
    accel: str           # "kvm" or "tcg"
    mem_mb: int
    kernel_args: list[str]
    port: int            # the debugcon (S) port
    debugcon: str        # "file" (counts bytes) or "null" (no write(2) in QEMU's exit path)
    mem_lock: bool = True
    devices: tuple[str, ...] = ()   # devices the plan's kinds need (GuestPlan.devices)
    vcpus: int = 1                  # 2 for the IPI kinds (RunPlan.vcpus)


BASE_KERNEL_ARGS = [
    "console=ttyS0", "panic=-1", "reboot=t", "quiet", "loglevel=3",
    # Fewer interruptions of the timed loops in the guest.
    "nokaslr", "tsc=reliable", "clocksource=tsc", "nowatchdog", "nmi_watchdog=0",
]


def can_lock_memory(mem_mb: int) -> bool:
    """Whether a QEMU started by this process may mlock its guest memory (root or a big enough
    RLIMIT_MEMLOCK)."""
    import os
    import resource

    if os.geteuid() == 0:
        return True
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return soft == resource.RLIM_INFINITY or soft >= (mem_mb + 256) << 20


def qemu_binary(build: Path) -> Path:
    return build / "qemu" / "bin" / "qemu"


def accel_args(accel: str) -> list[str]:
    """The accelerator and CPU model of every VM exitlat starts (the cases and the reference)."""
    if accel == "kvm":
        # -cpu host: the guest sees the host CPU; +invtsc makes the TSC invariant so RDTSC(P)
        # never exits and the guest trusts it; migratable=no is required for invtsc.
        # vapic off: QEMU's TPR-access patching adds userspace exits of its own (reason
        # TPR_ACCESS), noise for a latency tool; it also makes user-mode OUTB #GP under nested TCG.
        return ["-accel", "kvm", "-cpu", "host,migratable=no,+invtsc",
                "-global", "kvm-apic.vapic=off"]
    return ["-accel", "tcg,thread=single", "-cpu", "max"]


def smp_arg(vcpus: int) -> str:
    """-smp: one socket per vCPU. The guest kernel has no ACPI, so it finds its CPUs in the
    firmware's MP table, and SeaBIOS lists one CPU per package there: two vCPUs as two cores of
    one socket would leave the guest with one. (Where the vCPUs sit for the host is the host
    cores' matter, recorded as run.topology.)"""
    return "1" if vcpus == 1 else f"{vcpus},sockets={vcpus},cores=1,threads=1"


def qemu_argv(cfg: QemuConfig, files: RunFiles) -> list[str]:
    accel = accel_args(cfg.accel)
    chardev = (f"file,id=dbg,path={files.debugcon}" if cfg.debugcon == "file"
               else "null,id=dbg")
    return [
        str(qemu_binary(cfg.build)),
        *accel,
        "-machine", "pc", "-smp", smp_arg(cfg.vcpus), "-m", f"{cfg.mem_mb}M",
        "-overcommit", f"mem-lock={'on' if cfg.mem_lock else 'off'}",
        "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none", "-nic", "none",
        "-no-reboot", "-S",
        "-kernel", str(cfg.build / "bzImage"),
        "-initrd", str(cfg.build / "initramfs.cpio.gz"),
        "-append", " ".join(BASE_KERNEL_ARGS + cfg.kernel_args),
        "-chardev", f"socket,id=con,path={files.console},server=on,wait=off",
        "-serial", "chardev:con",
        "-chardev", chardev,
        "-device", f"isa-debugcon,iobase={cfg.port:#x},chardev=dbg",
        "-drive", f"file={files.disk},format=raw,if=none,id=samples,cache=unsafe",
        "-device", "virtio-blk-pci,drive=samples",
        *[a for d in cfg.devices for a in ("-device", d)],
        "-qmp", f"unix:{files.qmp},server=on,wait=off",
    ]
