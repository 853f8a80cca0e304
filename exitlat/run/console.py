"""The guest's serial console over QEMU's unix socket: read lines (all kept for the bundle's
console.log), write the handshake's `go`."""

import socket
import time

from exitlat.errors import ExitlatError


class ConsoleClosed(Exception):
    """QEMU closed the console: the VM is gone."""


GONE_POLL_S = 0.5      # how often a wait for QEMU's socket asks whether QEMU is still there


def connect_unix(path: str, timeout: float, what: str, exit_code=None) -> socket.socket:
    """Connect to a unix socket QEMU is about to create, waiting up to `timeout` for it.
    `exit_code()`: QEMU's exit status, None while it runs: a QEMU that died at start is said at
    once, not after the whole timeout."""
    deadline = time.monotonic() + timeout
    next_poll = time.monotonic() + GONE_POLL_S
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            now = time.monotonic()
            if exit_code is not None and now >= next_poll:
                next_poll = now + GONE_POLL_S
                code = exit_code()
                if code is not None:
                    raise ExitlatError(f"QEMU exited (code {code}) before its {what} socket "
                                       "appeared") from None
            if now > deadline:
                raise ExitlatError(f"QEMU's {what} socket did not appear within {timeout:.0f} s") from None
            time.sleep(0.05)


class Console:
    def __init__(self, path: str, timeout: float = 30.0, exit_code=None):
        self.sock = connect_unix(path, timeout, "console", exit_code)
        self.buffer = b""
        self.transcript = bytearray()

    def readline(self, timeout: float) -> str | None:
        """One line without its newline, None on timeout; ConsoleClosed when QEMU is gone."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(min(left, 0.5))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            if not data:
                raise ConsoleClosed()
            self.transcript += data
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace").rstrip("\r")

    def send(self, text: str) -> None:
        """Write to the guest. A VM that is already gone is not an error here: what it printed
        before it went is still in the socket, and readline() returns it before it reports the
        close (a guest without the handshake can finish and reset before the host's next `go`)."""
        try:
            self.sock.sendall(text.encode())
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
