"""`zcio proxy` under systemd's protocols, with a fake activator (always): it creates a
listening socket, execs zcio with LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES and a
NOTIFY_SOCKET datagram socket, and checks READY=1, WATCHDOG=1, RELOADING=1 then READY=1
on SIGHUP, STOPPING=1 on SIGTERM, and an echo served through the passed socket
(listen = ["systemd:web"]). A real systemd-run test runs only where systemd is PID 1.
"""

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_support as e2e  # noqa: E402

EXEC_WITH_LISTEN_FDS = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
                        "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])")


class FakeActivator(e2e.E2ETestCase):
    def setUp(self):
        super().setUp()
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.path("notify"))
        self._closers.append(self.notify.close)
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self._closers.append(self.lsock.close)

    def activate(self, listen, watchdog_usec=None):
        up = self.selector_echo()
        cfg = self.path("zcio.toml")
        with open(cfg, "w") as f:
            f.write('[[route]]\nname = "a"\nlisten = ["%s"]\nupstream = "%s"\n' % (listen, up.address))
        fd = fcntl.fcntl(self.lsock.fileno(), fcntl.F_DUPFD, 10)
        self._closers.append(lambda: os.close(fd))
        env = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="web", NOTIFY_SOCKET=self.path("notify"))
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return self.spawn([sys.executable, "-c", EXEC_WITH_LISTEN_FDS, str(fd), e2e.ZCIO, "proxy",
                           "--config", cfg, "--threads", "2"], env=env, pass_fds=(fd,))

    def next_notify(self, want, timeout=e2e.SHORT):
        """Datagrams until one holds the line `want`; returns every line seen."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.notify.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                lines = self.notify.recv(4096).decode().splitlines()
            except socket.timeout:
                break
            seen += lines
            if want in lines:
                return seen
        self.fail("no %s from zcio within %.0fs (saw %s)" % (want, timeout, seen))

    def echo(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=e2e.SHORT) as s:
            blob = os.urandom(65536)
            s.sendall(blob)
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(e2e.sha(e2e.recv_all(s)[0]), e2e.sha(blob))

    def test_notify_and_passed_socket(self):
        p = self.activate("systemd:web", watchdog_usec=200000)
        self.next_notify("READY=1")
        p.wait_for(r"a listening on 127\.0\.0\.1:%d" % self.port)
        self.lsock.close()  # zcio's copy alone serves now
        self.echo()
        seen = self.next_notify("WATCHDOG=1")
        self.next_notify("WATCHDOG=1")  # again, within the 100 ms half-period
        p.send_signal(signal.SIGHUP)
        self.next_notify("RELOADING=1")
        self.next_notify("READY=1")
        p.wait_for("reloaded: 1 route")
        self.echo()
        p.send_signal(signal.SIGTERM)
        self.next_notify("STOPPING=1")
        self.assertEqual(p.wait(e2e.SHORT), 0, p.stderr_text())
        self.assertNotIn("LISTEN_FDS", seen)

    def test_unknown_name_is_refused(self):
        p = self.activate("systemd:nope")
        self.assertEqual(p.wait(e2e.SHORT), 2)
        err = p.stderr_text()
        self.assertIn("systemd:nope: systemd passed no socket of that name (passed: web)", err)

    def test_systemd_address_without_activation(self):
        cfg = self.path("plain.toml")
        with open(cfg, "w") as f:
            f.write('[[route]]\nname = "a"\nlisten = ["systemd:web"]\nupstream = "127.0.0.1:9"\n')
        rc, _, err = e2e.run_zcio(["proxy", "--config", cfg])
        self.assertEqual(rc, 2)
        self.assertIn("no sockets were passed by systemd", err)


class RealSystemd(e2e.E2ETestCase):
    def test_systemd_run(self):
        try:
            with open("/proc/1/comm") as f:
                init = f.read().strip()
        except OSError:
            init = "?"
        if init != "systemd" or shutil.which("systemd-run") is None:
            self.skipTest("systemd is not PID 1 here (PID 1 is %r): no systemd-run" % init)
        port = e2e.free_port()
        up = self.selector_echo()
        unit = "zcio-e2e-%d" % os.getpid()
        subprocess.run(["systemd-run", "--unit", unit, "-p", "Type=notify", e2e.ZCIO, "proxy",
                        "--listen", "127.0.0.1:%d" % port, "--upstream", up.address], check=True,
                       timeout=e2e.SHORT)
        self._closers.append(lambda: subprocess.run(["systemctl", "stop", unit], timeout=e2e.SHORT))
        state = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True)
        self.assertEqual(state.stdout.strip(), "active")
        with socket.create_connection(("127.0.0.1", port), timeout=e2e.SHORT) as s:
            s.sendall(b"ping")
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(e2e.recv_all(s)[0], b"ping")


if __name__ == "__main__":
    e2e.main()
