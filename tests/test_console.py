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
