"""A small QMP client (QEMU Machine Protocol over a unix socket): enough to start a paused VM,
find its vCPU thread and read KVM statistics."""

import json

from .console import connect_unix
from exitlat.errors import ExitlatError


class QMPError(ExitlatError):
    pass


class QMP:
    def __init__(self, path: str, timeout: float = 30.0, exit_code=None):
        self.path = path
        self.sock = connect_unix(path, timeout, "QMP", exit_code)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rwb")
        self.greeting = self._read()
        self.command("qmp_capabilities")

    def _read(self) -> dict:
        line = self.file.readline()
        if not line:
            raise QMPError("QEMU closed the QMP connection")
        return json.loads(line)

    def command(self, name: str, **args) -> object:
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise QMPError(f"QMP {name}: {reply['error'].get('desc', reply['error'])}")
            return reply.get("return")

    def version(self) -> str:
        q = self.greeting.get("QMP", {}).get("version", {})
        v = q.get("qemu", {})
        pkg = q.get("package", "").strip()
        return f"{v.get('major')}.{v.get('minor')}.{v.get('micro')}" + (f" ({pkg})" if pkg else "")

    def vcpu_threads(self) -> list[int]:
        """The vCPU threads' ids in vCPU order (vCPU 0, the measured one, first)."""
        cpus = sorted(self.command("query-cpus-fast"), key=lambda c: c.get("cpu-index", 0))
        self.cpu_paths = [c.get("qom-path") for c in cpus]
        return [int(c["thread-id"]) for c in cpus]

    def kvm_stats(self, vcpu: int = 0) -> dict | None:
        """KVM's own counters (exits, io_exits, …) of one vCPU (0: the measured one), where kernel
        and QEMU offer them."""
        try:
            res = self.command("query-stats", target="vcpu")
        except (QMPError, OSError, ValueError):  # not offered, or QEMU already gone
            return None
        paths = getattr(self, "cpu_paths", None) or []
        if len(res or []) > 1:       # several vCPUs: the one asked for, by its QOM path
            if vcpu >= len(paths):
                return None
            res = [e for e in res if e.get("qom-path") == paths[vcpu]]
            if len(res) != 1:
                return None
        out = {}
        for entry in res or []:  # [{"provider": "kvm", "qom-path": ..., "stats": [{name, value}]}]
            for stat in entry.get("stats", []):
                if isinstance(stat.get("value"), int):
                    out[stat["name"]] = out.get(stat["name"], 0) + stat["value"]
        return out

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass
