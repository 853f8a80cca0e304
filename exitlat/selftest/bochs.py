"""The emulated VT-x machine of `invoke selftest --vendor intel`: Bochs (QEMU's TCG cannot emulate
VMX), run in a container of docker/bochs.Dockerfile, booting L1 from a CD and writing its results to
an ATA disk.

* the image: Debian's Bochs packages, checked against pins.yaml's sha256 inside the build, plus
  xorriso and isolinux for the CD (cached by the hash of its inputs, like every image)
* the CD: isolinux, L1's kernel and its initramfs (the cached L1 userland plus the per-run archive),
  made by xorriso in a container of that image
* the machine: the bochsrc (values that mattered: docs/verification.md), the container's command
  line, and a display client: Debian's Bochs has no `nogui` display, its `term` display sleeps 1 ms
  on stdin whenever the emulated CPU halts (runs took 2.2x as long), and its `rfb` display waits for
  a VNC client, so `RfbDrain` is one that connects and discards what it gets.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

from exitlat.build.images import DOCKER_DIR, short_hash
from exitlat.build.pins import Pins
from exitlat.errors import ExitlatError

DOCKERFILE = "bochs.Dockerfile"
BOCHS_FORMAT = 1
CPU_MODEL = "corei7_skylake_x"     # VMX with EPT, VPID, unrestricted guest, a preemption timer bit
MEGS = 2048
# One emulated CPU: L2's vCPU shares L1's core 0 with QEMU's other threads and bench. Two (the
# AMD-V host's layout) made every run ~2x slower, and with IPS below they hung Bochs's BIOS.
CPUS = 1
# Emulated instructions per emulated second: Bochs's TSC counts instructions, while its CPU model
# tells L1 (CPUID) that the TSC runs at 3.5 GHz, so at this rate L1's clock (the TSC) and its LAPIC
# timer (emulated time) agree. At 100 MIPS two of four runs had timed windows with 0.1-0.2 interrupt
# exits per iteration (above the verifier's background limit); at this rate none did.
IPS = 3_500_000_000
# The ATA output disk: Bochs wants whole cylinders of 16 heads x 63 sectors.
DISK_HEADS, DISK_SPT = 16, 63
WORK = "/work"                     # the run's folder inside the container
LOGS = "/logs"                     # the folder of L1's console log (build/logs) inside it


def image_tag(pins: Pins) -> str:
    eh = pins.emulated_host
    return "exitlat/bochs:" + short_hash(BOCHS_FORMAT, (DOCKER_DIR / DOCKERFILE).read_bytes(),
                                         pins.base, eh.bochs_packages, eh.bochs_tools)


def build_args(pins: Pins, base: str) -> dict[str, str]:
    eh = pins.emulated_host
    d = pins.base["debootstrap"]
    pk = eh.bochs_packages
    return {"BASE": base, "SUITE": d["suite"], "MIRROR": d["mirror"],
            "PACKAGES": " ".join(f"{n}={p['version']}" for n, p in sorted(pk.items())),
            "SHA256S": ";".join(f"{p['sha256']}  {p['file']}" for _n, p in sorted(pk.items())),
            "TOOLS": " ".join(f"{n}={v}" for n, v in sorted(eh.bochs_tools.items()))}


def ensure_bochs_image(pins: Pins, progress, log_path: Path) -> str:
    """The Bochs image's tag, built when missing (a few minutes, once)."""
    from exitlat.build.baseimage import ensure_base_image
    from exitlat.build.images import build_image, docker_client, image_exists

    client = docker_client()
    tag = image_tag(pins)
    if image_exists(client, tag):
        return tag
    base = ensure_base_image(client, pins.base, progress.say)
    progress.say(f"Bochs image: building {tag} (Debian's Bochs, sha256-checked; once)")
    from .image import _LogTee

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        build_image(client, DOCKERFILE, tag, build_args(pins, base),
                    _LogTee(log, progress, "Bochs image"), progress.say)
    return tag


# -- the CD and the disk ------------------------------------------------------------------------

ISOLINUX_CFG = """SERIAL 0 115200
DEFAULT l1
PROMPT 0
TIMEOUT 0
LABEL l1
  KERNEL /vmlinuz
  INITRD /initrd
  APPEND {args}
"""


def cd_script(args: str) -> str:
    """The shell run in the container that lays out the CD and writes /work/l1.iso."""
    cfg = ISOLINUX_CFG.format(args=args).replace("\n", "\\n")
    return ("set -e; d=$(mktemp -d); mkdir -p $d/isolinux; "
            "cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 $d/isolinux/; "
            f"ln {WORK}/vmlinuz $d/vmlinuz 2>/dev/null || cp {WORK}/vmlinuz $d/vmlinuz; "
            f"ln {WORK}/initrd $d/initrd 2>/dev/null || cp {WORK}/initrd $d/initrd; "
            f"printf '{cfg}' > $d/isolinux/isolinux.cfg; "
            f"xorriso -as mkisofs -quiet -o {WORK}/l1.iso -b isolinux/isolinux.bin -c isolinux/boot.cat "
            "-no-emul-boot -boot-load-size 4 -boot-info-table -R $d; rm -rf $d")


def disk_cylinders(nbytes: int) -> int:
    return -(-nbytes // (DISK_HEADS * DISK_SPT * 512))


def disk_bytes(nbytes: int) -> int:
    """The output disk's size: nbytes rounded up to whole cylinders."""
    return disk_cylinders(nbytes) * DISK_HEADS * DISK_SPT * 512


def bochsrc(disk_size: int, console: str = "console.log", cpus: int = CPUS) -> str:
    """Bochs's configuration (paths inside the container). The RFB display waits for our client;
    the console (COM1) goes to a file that the host follows; the output disk is ata1-master."""
    return f"""# written by exitlat/selftest/bochs.py for one run
megs: {MEGS}
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
cpu: model={CPU_MODEL}, count={cpus}, ips={IPS}, reset_on_triple_fault=1, ignore_bad_msrs=1
pci: enabled=1, chipset=i440fx
ata0-master: type=cdrom, path={WORK}/l1.iso, status=inserted
ata1-master: type=disk, mode=flat, path={WORK}/out.img, cylinders={disk_cylinders(disk_size)}, heads={DISK_HEADS}, spt={DISK_SPT}
boot: cdrom
display_library: rfb, options="timeout=3600"
clock: sync=none, time0={int(time.time())}
com1: enabled=1, mode=file, dev={LOGS}/{console}
log: {WORK}/bochs.log
error: action=ignore
panic: action=fatal
"""


# -- the display client -------------------------------------------------------------------------

class RfbDrain:
    """A VNC client that completes the RFB 3.x handshake (security type None) with Bochs's rfb
    display and then reads and drops everything, so that Bochs never waits on it."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.error = ""

    def connect(self, deadline: float, alive=lambda: True) -> None:
        """Connect and shake hands, retrying until `deadline`: Docker's port proxy accepts a
        connection before Bochs listens, then closes it."""
        while True:
            try:
                self.sock = socket.create_connection((self.host, self.port), timeout=5)
                self._handshake()
                return
            except (OSError, ExitlatError) as e:
                self.close()
                if time.monotonic() > deadline or not alive():
                    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                    raise ExitlatError(f"Bochs's display (port {self.port}) did not take a "
                                       f"client: {why}") from None
                time.sleep(0.5)

    def _handshake(self) -> None:
        s = self.sock
        version = self._read(12)
        if not version.startswith(b"RFB "):
            raise ExitlatError(f"Bochs's display spoke no RFB (got {version!r})")
        s.sendall(version)                             # the server's own version
        minor = int(version[8:11])
        if minor >= 7:
            n = self._read(1)[0]
            types = self._read(n)
            if 1 not in types:
                raise ExitlatError(f"Bochs's display offers no security type None ({list(types)})")
            s.sendall(b"\x01")
            if minor >= 8 and struct.unpack(">I", self._read(4))[0] != 0:
                raise ExitlatError("Bochs's display refused the connection")
        else:
            if struct.unpack(">I", self._read(4))[0] != 1:
                raise ExitlatError("Bochs's display asks for authentication")
        s.sendall(b"\x01")                             # ClientInit: shared
        self._read(24)                                 # ServerInit: size, pixel format, name length
        s.settimeout(None)
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ExitlatError("Bochs's display closed the connection during the handshake")
            out += chunk
        return out

    def _drain(self) -> None:
        try:
            while self.sock.recv(1 << 16):
                pass
        except OSError as e:
            self.error = str(e)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass


# -- the container as a process -------------------------------------------------------------------

class ContainerProc:
    """What the console follower needs of a process (poll, kill) for a detached container. Bochs
    ignores SIGTERM: kill it."""

    def __init__(self, container):
        self.c = container
        self.code: int | None = None

    def poll(self) -> int | None:
        if self.code is None:
            try:
                self.c.reload()
                if self.c.status in ("exited", "dead"):
                    self.code = int(self.c.attrs["State"]["ExitCode"])
            except Exception:       # removed under us: gone
                self.code = -1
        return self.code

    def kill(self) -> None:
        try:
            if self.poll() is None:
                self.c.kill()
            self.c.wait(timeout=30)
        except Exception:
            pass
        try:
            self.c.remove(force=True)
        except Exception:
            pass


def published_port(container, port: int, deadline: float) -> int:
    """The host port Docker published for the container's `port` (127.0.0.1 only)."""
    while True:
        container.reload()
        got = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(f"{port}/tcp")
        if got:
            return int(got[0]["HostPort"])
        if container.status in ("exited", "dead") or time.monotonic() > deadline:
            raise ExitlatError(f"Bochs's container published no port for its display "
                               f"(status {container.status})")
        time.sleep(0.2)
