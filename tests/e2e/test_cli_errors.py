#!/usr/bin/env python3
"""End-to-end tests of zcio's error reporting: a usage error (bad flag, address,
option, config file) exits 2 and a runtime failure (port in use) exits 1, each with
exactly one line on stderr naming the problem; never a hang or a crash.

Run: python3 tests/e2e/test_cli_errors.py --zcio build/tools/zcio/zcio
"""

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_support as e2e  # noqa: E402
from e2e_support import E2ETestCase, run_zcio  # noqa: E402

UP = "127.0.0.1:9"  # never contacted: every command below fails before connecting


class HelpAndVersion(E2ETestCase):
    def test_help_and_version(self):
        for args in (["--help"], ["proxy", "--help"], ["copy", "--help"], ["bench", "--help"]):
            with self.subTest(args=args):
                rc, out, err = run_zcio(args)
                self.assertEqual(rc, 0, err)
                self.assertIn(b"Usage", out)
        rc, out, err = run_zcio(["--version"])
        self.assertEqual(rc, 0, err)
        self.assertRegex(out.decode().strip(), r"^zcio \d+\.\d+\.\d+$")
        rc, out, err = run_zcio(["proxy", "--help"])
        for flag in (b"--listen", b"--upstream", b"--config", b"--threads", b"--engine", b"--pipe-size",
                     b"--max-connections", b"--idle-timeout", b"--connect-timeout", b"--rate-limit",
                     b"--proxy-protocol", b"--metrics", b"--drain-timeout", b"--busy-poll"):
            self.assertIn(flag, out)


class FlagErrors(E2ETestCase):
    def check(self, args, *needles):
        rc, out, err = run_zcio(args)
        self.assertEqual(rc, 2, "exit %d for %r; stderr: %s" % (rc, args, err))
        self.assertEqual(out, b"", "usage errors go to stderr")
        return self.assertOneLine(err, *needles)

    def test_subcommands(self):
        self.check([], "subcommand")
        self.check(["frobnicate"], "frobnicate")

    def test_unknown_flag(self):
        self.check(["proxy", "--listen", "127.0.0.1:0", "--upstream", UP, "--frobnicate"], "--frobnicate")
        self.check(["copy", "--frobnicate", "-", "-"], "--frobnicate")
        self.check(["--frobnicate", "proxy"], "--frobnicate")

    def test_unknown_flag_points_to_the_subcommand_help(self):
        self.check(["--bogus"], "--bogus", "see zcio --help")  # not "a subcommand is required"
        self.check(["proxy", "--bogus"], "--bogus", "see zcio proxy --help")
        self.check(["copy", "--bogus", "-", "-"], "--bogus", "see zcio copy --help")
        self.check(["udp-echo", "--bogus"], "--bogus", "see zcio udp-echo --help")
        self.check(["bench", "--bogus"], "--bogus", "see zcio bench --help")
        self.check(["proxy", "--listen", "127.0.0.1:0", "--upstream", UP, "--threads", "0"], "--threads",
                   "see zcio proxy --help")

    def test_ipv6_listen_without_port_quotes_what_was_typed(self):
        # CLI11 read "[::1]" as a one-element list and handed over "::1", which the
        # default host then turned into "127.0.0.1::1".
        line = self.check(["proxy", "--listen", "[::1]", "--upstream", UP], '"[::1]"', "missing port")
        self.assertNotIn("127.0.0.1", line)
        line = self.check(["proxy", "--listen", "::1", "--upstream", UP], '"::1"', "[::1]:PORT")
        self.assertNotIn("127.0.0.1", line)
        self.check(["copy", "tcp-listen:[::1]", "-"], '"[::1]"', "missing port")

    def test_a_port_alone_says_the_host_is_missing(self):
        base = ["proxy", "--listen", "127.0.0.1:0", "--upstream"]
        self.check(base + ["9001"], '"9001"', "missing host", "127.0.0.1:9001")
        self.check(["copy", "-", "tcp:9001"], '"9001"', "missing host")

    def test_a_url_is_not_an_address(self):
        base = ["proxy", "--listen", "127.0.0.1:0", "--upstream"]
        self.check(base + ["http://host:1/"], '"http://host:1/"', "a URL is not an address", "host:1)")
        self.check(base + ["https://example.com/x"], "a URL is not an address", "example.com:PORT")
        self.check(["copy", "-", "tcp:http://127.0.0.1:9/"], "a URL is not an address", "127.0.0.1:9")

    def test_sizes_are_whole_numbers(self):
        base = ["proxy", "--listen", "127.0.0.1:0", "--upstream", UP]
        self.check(base + ["--rate-limit", "1.5M"], "--rate-limit", '"1.5M"', "whole", "use 1536K")
        self.check(base + ["--rate-limit", "1.1M"], "--rate-limit", '"1.1M"', "whole number")
        self.check(base + ["--pipe-size", "0.5M"], "--pipe-size", "use 512K")
        self.check(["copy", "--limit", "2.25G", "-", "-"], "--limit", "use 2304M")

    def test_counts_are_not_negative(self):
        # CLI11 read "-1" into the unsigned limit as 2^64 - 1 (no limit at all).
        base = ["proxy", "--listen", "127.0.0.1:0", "--upstream", UP]
        self.check(base + ["--max-connections", "-1"], "--max-connections", '"-1"', "whole number")
        self.check(base + ["--max-connections=-5"], "--max-connections", '"-5"', "whole number")
        self.check(base + ["--max-connections", "1.5"], "--max-connections", '"1.5"')

    def test_bad_addresses(self):
        self.check(["proxy", "--listen", "nope", "--upstream", UP], "nope")
        self.check(["proxy", "--listen", "127.0.0.1", "--upstream", UP], "127.0.0.1")
        self.check(["proxy", "--listen", "300.1.2.3:80", "--upstream", UP], "300.1.2.3")
        self.check(["proxy", "--listen", "127.0.0.1:99999", "--upstream", UP], "99999")
        self.check(["proxy", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:"], "127.0.0.1:")
        self.check(["proxy", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:0"], "port 0")
        self.check(["proxy", "--listen", "[::1:80", "--upstream", UP], "[::1:80")
        self.check(["proxy", "--listen", "127.0.0.1:9000-8000", "--upstream", UP], "9000-8000")
        self.check(["proxy", "--listen", "*:8080", "--upstream", UP], "*:8080", "0.0.0.0")
        self.check(["proxy", "--listen", "127.0.0.1:0", "--upstream", UP, "--metrics", "metrics"], "metrics")

    def test_missing_options(self):
        self.check(["proxy", "--listen", "127.0.0.1:0"], "--upstream")
        self.check(["proxy", "--upstream", UP], "--listen")
        self.check(["copy", "-"], "DST")
        self.check(["proxy", "--listen", "127.0.0.1:0", "--upstream"], "--upstream")

    def test_bad_values(self):
        base = ["proxy", "--listen", "127.0.0.1:0", "--upstream", UP]
        self.check(base + ["--engine", "warp"], "--engine", "warp")
        self.check(base + ["--rate-limit", "10Q"], "--rate-limit", "10Q")
        self.check(base + ["--rate-limit", "fast"], "--rate-limit", "fast")
        self.check(base + ["--pipe-size", "big"], "--pipe-size", "big")
        self.check(base + ["--idle-timeout", "soon"], "--idle-timeout", "soon")
        self.check(base + ["--idle-timeout", "5 years"], "--idle-timeout")
        self.check(base + ["--connect-timeout", "-1"], "--connect-timeout")
        self.check(base + ["--drain-timeout", "x"], "--drain-timeout")
        self.check(base + ["--busy-poll", "1s"], "--busy-poll", "too long")
        dup = ["proxy", "--upstream", "127.0.0.1:9"]
        self.check(dup + ["--listen", "127.0.0.1:21977", "--listen", "127.0.0.1:21977"], "--listen",
                   "127.0.0.1:21977", "given twice")
        self.check(dup + ["--listen", "127.0.0.1:21970-21975", "--listen", "127.0.0.1:21975"], "--listen",
                   "127.0.0.1:21975", "already taken by --listen 127.0.0.1:21970-21975")
        # The wildcard takes every address of its family on that port (as in a config file).
        self.check(dup + ["--listen", "0.0.0.0:21978", "--listen", "127.0.0.1:21978"], "--listen",
                   "127.0.0.1:21978", "already taken by --listen 0.0.0.0:21978")
        self.check(base + ["--busy-poll", "fast"], "--busy-poll", "fast")
        self.check(base + ["--proxy-protocol", "v3"], "--proxy-protocol", "v3")
        self.check(base + ["--threads", "0"], "--threads")
        self.check(base + ["--threads", "many"], "--threads")
        self.check(base + ["--max-connections", "lots"], "--max-connections")
        self.check(["--log-level", "loud", "proxy", "--listen", "127.0.0.1:0", "--upstream", UP], "loud")
        self.check(["bench", "--idle", "0"], "--idle")
        self.check(["bench", "--seconds", "x"], "--seconds")

    def test_config_conflicts_with_listen(self):
        cfg = self.path("ok.toml")
        with open(cfg, "w") as f:
            f.write('[[route]]\nlisten = "127.0.0.1:0"\nupstream = "%s"\n' % UP)
        self.check(["proxy", "--config", cfg, "--listen", "127.0.0.1:0"], "--config")


class ConfigErrors(E2ETestCase):
    """An invalid file: one line naming the file, the line and the key; exit 2."""

    def check(self, text, line, *needles):
        cfg = self.path("zcio.toml")
        with open(cfg, "w") as f:
            f.write(text)
        rc, out, err = run_zcio(["proxy", "--config", cfg])
        self.assertEqual(rc, 2, "exit %d; stderr: %s" % (rc, err))
        prefix = cfg + ":" + (str(line) + ":" if line else "")
        return self.assertOneLine(err, prefix, *needles)

    def test_toml_syntax_error(self):
        self.check('[[route]]\nlisten = "127.0.0.1:0"\nupstream = "127.0.0.1:9\n', 3)
        self.check('[[route]]\nlisten = "127.0.0.1:0"\nupstream "127.0.0.1:9"\n', 3)
        self.check('[[route]\nlisten = "127.0.0.1:0"\n', 1)

    def test_unknown_key(self):
        self.check('# routes\n[[route]]\nlisten = "127.0.0.1:0"\ncolour = "blue"\nupstream = "%s"\n' % UP,
                   4, "colour", "unknown key")
        self.check('colour = 1\n[[route]]\nlisten = "127.0.0.1:0"\nupstream = "%s"\n' % UP, 1, "colour")
        # In the second route: the key is named with its route.
        self.check('[[route]]\nlisten = "127.0.0.1:0"\nupstream = "%s"\n\n[[route]]\nlisten = "127.0.0.1:0"\n'
                   'upstream = "%s"\nspeed = 3\n' % (UP, UP), 8, "route[1].speed")

    def test_bad_values(self):
        route = '[[route]]\nlisten = "127.0.0.1:0"\nupstream = "%s"\n' % UP
        self.check(route + 'rate_limit = "fast"\n', 4, "rate_limit", "fast")
        self.check(route + 'engine = "warp"\n', 4, "engine", "warp")
        self.check(route + 'idle_timeout = "soon"\n', 4, "idle_timeout", "soon")
        self.check(route + 'idle_timeout = -1\n', 4, "idle_timeout")
        # Found by tests/fuzz (fuzz_route_config): these overflowed the nanosecond count.
        self.check(route + 'idle_timeout = 1e300\n', 4, "idle_timeout", "too long")
        self.check(route + 'connect_timeout = inf\n', 4, "connect_timeout", "too long")
        self.check(route + 'idle_timeout = nan\n', 4, "idle_timeout")
        self.check('drain_timeout = 1e10\n' + route, 1, "drain_timeout", "too long")
        self.check('busy_poll = "20ms"\n' + route, 1, "busy_poll", "too long")
        self.check(route + 'max_connections = "ten"\n', 4, "max_connections")
        self.check(route + 'max_connections = -5\n', 4, "max_connections")
        self.check(route + 'proxy_protocol = "v9"\n', 4, "proxy_protocol", "v9")
        self.check(route + 'pipe_size = true\n', 4, "pipe_size")
        self.check('[[route]]\nlisten = "nope"\nupstream = "%s"\n' % UP, 2, "listen", "nope")
        self.check('[[route]]\nlisten = "127.0.0.1:0"\nupstream = 42\n', 3, "upstream")
        self.check('threads = 0\n' + route, 1, "threads")
        self.check('metrics = "x"\n' + route, 1, "metrics")

    def test_listen_address_used_twice(self):
        # Each of these used to start binding and fail with "Address already in use"
        # (exit 1): now the file is refused, at the line of the second claim.
        def two(first, second, extra=""):
            return ('[[route]]\nlisten = %s\nupstream = "%s"\n\n'
                    '[[route]]\n%supstream = "%s"\nlisten = %s\n' % (first, UP, extra, UP, second))
        self.check(two('"127.0.0.1:21901"', '"127.0.0.1:21901"'), 7,
                   'route[1].listen: 127.0.0.1:21901 is already used by route[0]')
        line = self.check(two('"127.0.0.1:7000-7010"', '"127.0.0.1:7005"'), 7,
                          "route[1].listen: 127.0.0.1:7005 is already used by route[0]", "7000-7010")
        self.assertTrue(line.startswith("zcio: "), line)
        # Ranges that overlap in part; the first shared port is named.
        self.check(two('"127.0.0.1:7005-7020"', '"127.0.0.1:7000-7006"'), 7,
                   "route[1].listen: 127.0.0.1:7005 is already used by route[0]")
        # In a list, on its own line; a bare port means 127.0.0.1.
        self.check(two('"7100"', '[\n  "127.0.0.1:7200",\n  "127.0.0.1:7100",\n]'), 9,
                   "route[1].listen: 127.0.0.1:7100 is already used by route[0]")
        # The wildcard of a family takes every address of it on that port.
        self.check(two('"0.0.0.0:7300"', '"127.0.0.1:7300"'), 7, "127.0.0.1:7300", "0.0.0.0:7300")
        self.check(two('"[::1]:7300"', '"[::]:7300"'), 7, "route[1].listen", "[::]:7300")
        # Equal Unix paths and abstract names.
        sock = self.path("s.sock")
        self.check(two('"unix:%s"' % sock, '"unix:%s"' % sock), 7, "route[1].listen", sock)
        self.check(two('"unix:@zcio-dup"', '"unix:@zcio-dup"'), 7, "route[1].listen", "@zcio-dup")
        # Twice within one route.
        self.check('[[route]]\nlisten = ["127.0.0.1:7400-7401", "127.0.0.1:7401"]\nupstream = "%s"\n' % UP,
                   2, "route[0].listen: 127.0.0.1:7401 is already used by this route")

    def test_listen_addresses_that_may_coexist(self):
        # Port 0 (each gets its own port), other addresses or families, other paths:
        # accepted, so the proxy starts (and is stopped by SIGTERM once listening).
        cfg = self.path("ok.toml")
        with open(cfg, "w") as f:
            f.write('[[route]]\nlisten = ["127.0.0.1:0", "127.0.0.1:0"]\nupstream = "%s"\n'
                    '[[route]]\nlisten = ["127.0.0.1:0", "unix:%s"]\nupstream = "%s"\n'
                    '[[route]]\nlisten = "unix:%s"\nupstream = "%s"\n'
                    % (UP, self.path("a.sock"), UP, self.path("b.sock"), UP))
        proc = self.spawn([e2e.ZCIO, "proxy", "--config", cfg, "--threads", "1"])
        proc.wait_for(r"listening on", count=5)
        proc.send_signal(e2e.signal.SIGTERM)
        self.assertEqual(proc.wait(e2e.SHORT), 0)

    def test_route_name_used_twice(self):
        route = '[[route]]\nname = "%s"\nlisten = "127.0.0.1:0"\nupstream = "' + UP + '"\n'
        self.check(route % "web" + route % "db" + route % "web", 10,
                   'route[2].name: "web" is already the name of route[0]')
        # A default name (route1) taken by an explicit one.
        self.check(route % "route1" + '[[route]]\nlisten = "127.0.0.1:0"\nupstream = "%s"\n' % UP, 5,
                   'route[1].name: "route1" (the default name) is already the name of route[0]')

    def test_missing_pieces(self):
        self.check('[[route]]\nlisten = "127.0.0.1:0"\n', 1, "upstream")
        self.check('[[route]]\nupstream = "%s"\n' % UP, 1, "listen")
        self.check('threads = 2\n', None, "[[route]]")
        self.check('route = 5\n', 1, "route")

    def test_missing_file(self):
        missing = self.path("nope.toml")
        rc, out, err = run_zcio(["proxy", "--config", missing])
        self.assertEqual(rc, 2, err)
        self.assertOneLine(err, missing)


class RuntimeFailures(E2ETestCase):
    """Runtime failures: exit 1 and one line."""

    def busy_port(self):
        s = socket.socket()
        self.track(s)
        s.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: the proxy cannot share it
        s.listen(1)
        return s.getsockname()[1]

    def test_listen_port_in_use(self):
        port = self.busy_port()
        rc, out, err = run_zcio(["proxy", "--listen", "127.0.0.1:%d" % port, "--upstream", UP])
        self.assertEqual(rc, 1, err)
        self.assertOneLine(err, "127.0.0.1:%d" % port)

    def test_second_listen_port_in_use(self):
        port = self.busy_port()
        rc, out, err = run_zcio(["proxy", "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:%d" % port,
                                 "--upstream", UP])
        self.assertEqual(rc, 1, err)
        self.assertOneLine(err, "127.0.0.1:%d" % port)

    def test_metrics_port_in_use(self):
        port = self.busy_port()
        rc, out, err = run_zcio(["proxy", "--listen", "127.0.0.1:0", "--upstream", UP,
                                 "--metrics", "127.0.0.1:%d" % port])
        self.assertEqual(rc, 1, err)
        self.assertOneLine(err, "127.0.0.1:%d" % port)

    def test_unix_listen_path_unusable(self):
        bad = self.path("no/such/dir/s.sock")
        rc, out, err = run_zcio(["proxy", "--listen", "unix:" + bad, "--upstream", UP])
        self.assertEqual(rc, 1, err)
        self.assertOneLine(err, bad)


if __name__ == "__main__":
    e2e.main()
