"""The guest's console as the host reads it: nothing the guest printed is lost when it is gone
before the host's next write (a guest without the handshake finishes and resets on its own)."""

import socket
import threading

import pytest

from exitlat.run.console import Console, ConsoleClosed


def test_a_failed_send_loses_nothing_the_guest_printed(tmp_path):
    path = str(tmp_path / "console.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    said = threading.Event()

    def guest():
        conn, _ = server.accept()
        conn.sendall(b'EXITLAT {"event":"done"}\nEXITLAT {"event":"finished","status":"ok"}\n')
        conn.close()                           # the VM is gone
        said.set()

    t = threading.Thread(target=guest)
    t.start()
    con = Console(path, timeout=5)
    said.wait(5)
    con.send("go\n")                           # fails: nobody reads any more; not an error
    con.send("go\n")
    assert con.readline(5) == 'EXITLAT {"event":"done"}'
    assert con.readline(5) == 'EXITLAT {"event":"finished","status":"ok"}'
    with pytest.raises(ConsoleClosed):         # only once everything was read
        con.readline(5)
    con.close()
    t.join(5)
    server.close()


def test_a_qemu_that_died_at_start_is_said_at_once(tmp_path):
    """QEMU that aborts before making its socket (e.g. a KVM that refuses an MSR) must be reported
    with its exit status in about a second, not after the whole socket timeout."""
    import time

    import pytest

    from exitlat.errors import ExitlatError
    from exitlat.run.console import connect_unix
    from exitlat.run.vm import qemu_error_line

    t0 = time.monotonic()
    with pytest.raises(ExitlatError, match=r"QEMU exited \(code -6\) before its console socket"):
        connect_unix(str(tmp_path / "none.sock"), 30.0, "console", exit_code=lambda: -6)
    assert time.monotonic() - t0 < 2
    with pytest.raises(ExitlatError, match="did not appear within 0 s"):
        connect_unix(str(tmp_path / "none.sock"), 0.2, "console", exit_code=lambda: None)
    err = (b"qemu-system-x86_64: error: failed to set MSR 0x10a to 0x400000000c000069\n"
           b"qemu-system-x86_64: kvm.c:3849: kvm_buf_set_msrs: Assertion failed.\n")
    assert qemu_error_line(err).endswith("failed to set MSR 0x10a to 0x400000000c000069")
    assert qemu_error_line(b"") == ""
