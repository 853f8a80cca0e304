"""Boot the built guest with no plan and wait for init's marker: the build's end-to-end check."""

import shutil
import tempfile
import time
from pathlib import Path

from exitlat.run.console import Console, ConsoleClosed
from exitlat.errors import ExitlatError
from exitlat.run.guestio import INIT_MARKER
from exitlat.run.qemu import QemuConfig, RunFiles, qemu_argv



def boot_to_marker(build: Path, accel: str = "tcg", container: bool = False, timeout: float = 120,
                   pins_base: dict | None = None) -> tuple[float, str]:
    """Returns (seconds from `cont` to the marker, console transcript); QEMU must exit by itself."""
    from exitlat.run.launcher import ContainerQemu, HostQemu
    from exitlat.run.qmp import QMP

    folder = Path(tempfile.mkdtemp(prefix="exitlat-smoke-"))
    files = RunFiles(folder)
    with open(files.disk, "wb") as f:
        f.truncate(1 << 20)
    argv = qemu_argv(QemuConfig(build, accel, 128, [], 0xE9, "file"), files)
    qemu = console = qmp = None
    try:
        if container:
            from exitlat.build.pins import load_pins
            qemu = ContainerQemu(argv, folder, build, [0], accel, pins_base or load_pins().base, print)
        else:
            qemu = HostQemu(argv, folder)
        console = Console(str(files.console))
        qmp = QMP(str(files.qmp))
        t0 = time.monotonic()
        qmp.command("cont")
        deadline = t0 + timeout
        while True:
            line = console.readline(max(0.1, deadline - time.monotonic()))
            if line is None:
                raise ExitlatError(f"no {INIT_MARKER} within {timeout:.0f} s")
            if INIT_MARKER in line:
                elapsed = time.monotonic() - t0
                break
        if qemu.wait(30) is None:
            raise ExitlatError("the guest printed its marker but QEMU did not exit")
        return elapsed, console.transcript.decode(errors="replace")
    except ConsoleClosed:
        err = (folder / "qemu-stderr.log")
        tail = err.read_text(errors="replace").strip().splitlines()[-1:] if err.exists() else []
        raise ExitlatError(f"QEMU exited before the marker {tail}") from None
    finally:
        if qmp:
            qmp.close()
        if console:
            console.close()
        if qemu:
            qemu.stop()
        shutil.rmtree(folder, ignore_errors=True)
