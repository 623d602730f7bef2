"""Runs an installed `zcio proxy` from a copy of the installed example config and checks
that it relays one connection: 1 MiB of random bytes to an echo upstream and back,
compared by sha256. Standard library only.

    python3 serve_check.py ZCIO_BIN CONFIG WORK_DIR

The copy differs from CONFIG only in its two addresses: the listen address becomes
127.0.0.1:0 (the real port is read from the log) and the upstream the echo server's,
so every other key of the shipped file is checked by a real start.
"""

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading

TIMEOUT = 30.0
PAYLOAD = 1 << 20
LISTEN = '"127.0.0.1:8080"'
UPSTREAM = '"127.0.0.1:8081"'


def echo_server():
    """A one-connection echo server on 127.0.0.1:0; returns (port, thread)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(TIMEOUT)

    def serve():
        with srv:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv.getsockname()[1], t


def write_config(src, dst, upstream_port):
    text = open(src).read()
    for old in (LISTEN, UPSTREAM):
        if text.count(old) != 1:
            sys.exit("serve_check: %s names %s %d times, not once" % (src, old, text.count(old)))
    text = text.replace(LISTEN, '"127.0.0.1:0"').replace(UPSTREAM, '"127.0.0.1:%d"' % upstream_port)
    with open(dst, "w") as f:
        f.write(text)


def wait_for_port(proc, log_lines):
    """Reads the proxy's stderr until its 'listening on' line; keeps the lines."""
    pattern = re.compile(r" listening on 127\.0\.0\.1:(\d+) ")
    for raw in proc.stderr:
        line = raw.decode(errors="replace")
        log_lines.append(line)
        m = pattern.search(line)
        if m:
            return int(m.group(1))
    sys.exit("serve_check: zcio proxy exited before listening:\n" + "".join(log_lines))


def relay_once(port):
    data = os.urandom(PAYLOAD)
    got = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
        c.settimeout(TIMEOUT)
        sender = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)))
        sender.start()
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            got += chunk
        sender.join(TIMEOUT)
    want, have = hashlib.sha256(data).hexdigest(), hashlib.sha256(got).hexdigest()
    if want != have:
        sys.exit("serve_check: echo differs: sent %d bytes sha256 %s, got %d sha256 %s"
                 % (len(data), want, len(got), have))
    print("serve_check: %d bytes relayed and echoed intact (sha256 %s)" % (len(got), have[:16]))


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: serve_check.py ZCIO_BIN CONFIG WORK_DIR")
    zcio, config, work = sys.argv[1:]
    upstream_port, echo = echo_server()
    copy = os.path.join(work, "zcio.toml")
    write_config(config, copy, upstream_port)
    proc = subprocess.Popen([zcio, "proxy", "--config", copy], stderr=subprocess.PIPE,
                            start_new_session=True)
    # Bounds every blocking read of the log below: the timer kills a hung proxy.
    killer = threading.Timer(TIMEOUT * 2, lambda: os.killpg(proc.pid, signal.SIGKILL))
    killer.start()
    log_lines = []
    try:
        port = wait_for_port(proc, log_lines)
        relay_once(port)
        echo.join(TIMEOUT)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read().decode(errors="replace")
        log_lines.append(rest)
        rc = proc.wait(TIMEOUT)
    finally:
        killer.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = "".join(log_lines)
    if rc != 0 or "closed client 127.0.0.1:" not in log:
        sys.exit("serve_check: zcio proxy exited %d; log:\n%s" % (rc, log))
    print("serve_check: %s proxy exited 0 after SIGTERM" % zcio)


if __name__ == "__main__":
    main()
