#!/usr/bin/env python3
"""Real clients through `zcio proxy`: curl fetching from `python3 -m http.server`,
and iperf3 for 2 seconds.

Run: python3 tests/e2e/test_real_clients.py --zcio build/tools/zcio/zcio
"""

import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_support as e2e  # noqa: E402
from e2e_support import IO_TIMEOUT, SHORT, E2ETestCase, file_sha, sha, write_random_file  # noqa: E402

MiB = 1 << 20


def run_bounded(args, timeout, cwd=None):
    """Runs a client in its own session; its group is killed whatever happens."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("%r hung (no exit within %.1fs)" % (args, timeout))
    finally:
        try:
            os.killpg(p.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        if p.poll() is None:
            p.wait(SHORT)
    return p.returncode, out, err.decode("utf-8", "replace")


class CurlThroughProxy(E2ETestCase):
    def setUp(self):
        super().setUp()
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")
        self.www = self.path("www")
        os.mkdir(self.www)
        self.http_port = e2e.free_port()
        self.http = self.spawn([sys.executable, "-m", "http.server", str(self.http_port),
                                "--bind", "127.0.0.1", "--directory", self.www], cwd=self.www)
        e2e.wait_tcp_listening(self.http_port, proc=self.http)

    def fetch(self, engine, name, size):
        data = write_random_file(os.path.join(self.www, name), size)
        proxy = self.start_proxy("--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:%d" % self.http_port,
                                 "--engine", engine)
        out = self.path("got-" + name)
        rc, _, err = run_bounded(["curl", "--silent", "--show-error", "--fail", "--noproxy", "*",
                                  "--max-time", str(int(IO_TIMEOUT)), "-o", out,
                                  "http://%s/%s" % (proxy.addr, name)], IO_TIMEOUT + 5)
        self.assertEqual(rc, 0, "curl failed: %s" % err)
        self.assertEqual(os.path.getsize(out), size)
        self.assertEqual(file_sha(out), sha(data), "the file came through changed")
        proxy.wait_metric("zcio_connections_active", 0)
        self.assertEqual(proxy.metric("zcio_connections_total"), 1)
        self.assertGreater(proxy.metric("zcio_bytes_upstream_to_client_total"), size)  # + HTTP head
        self.assertGreater(proxy.metric("zcio_bytes_client_to_upstream_total"), 0)

    def test_curl_auto(self):
        self.fetch("auto", "blob.bin", 6 * MiB + 4321)

    def test_curl_buffer(self):
        self.fetch("buffer", "blob2.bin", 3 * MiB + 1)


class IperfThroughProxy(E2ETestCase):
    def test_iperf3_two_seconds(self):
        if shutil.which("iperf3") is None:
            self.skipTest("iperf3 is not installed (Debian package iperf3): skipping the iperf3 run")
        port = e2e.free_port()
        server = self.spawn(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL)
        e2e.wait_tcp_listening(port, proc=server)
        proxy = self.start_proxy("--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:%d" % port)
        rc, out, err = run_bounded(["iperf3", "-c", "127.0.0.1", "-p", str(proxy.port), "-t", "2", "-J",
                                    "--connect-timeout", "10000"], 60)
        self.assertEqual(rc, 0, "iperf3 client failed: %s %s" % (err, out[-2000:]))
        report = json.loads(out)
        self.assertNotIn("error", report, report.get("error"))
        sent = report["end"]["sum_sent"]["bytes"]
        received = report["end"]["sum_received"]["bytes"]
        self.assertGreater(sent, 0)
        self.assertGreater(received, 0)
        self.assertEqual(server.wait(SHORT + 5), 0, server.stderr_text())  # -1: one test, then exit
        proxy.wait_metric("zcio_connections_active", 0)
        # Control connection + at least one data stream, every byte counted.
        self.assertGreaterEqual(proxy.metric("zcio_connections_total"), 2)
        self.assertGreaterEqual(proxy.metric("zcio_bytes_client_to_upstream_total"), received)


if __name__ == "__main__":
    e2e.main()
