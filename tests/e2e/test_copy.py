#!/usr/bin/env python3
"""End-to-end tests of `zcio copy SRC DST`: every example of the issue, checked by
sha256, with the kernel path reported by --verbose.

Run: python3 tests/e2e/test_copy.py --zcio build/tools/zcio/zcio
"""

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_support as e2e  # noqa: E402
from e2e_support import (IO_TIMEOUT, SHORT, E2ETestCase, file_sha, random_bytes, recv_all,  # noqa: E402
                         run_zcio, sha, sink_handler, source_sink_handler, write_random_file)

MiB = 1 << 20
VERBOSE = re.compile(r"^zcio copy: (\d+) bytes \(.*\) via (\S+) in [0-9.]+ s, .*/s$")
LISTENING = re.compile(r"^zcio copy: listening on (\S+)$")


class CopyTests(E2ETestCase):
    def verbose_summary(self, stderr):
        """--verbose prints exactly one summary line (no progress bar: stderr is not a tty),
        after the "listening on" line of a listening end."""
        self.assertNotIn("\r", stderr, "a progress bar on a non-terminal stderr")
        lines = [l for l in stderr.splitlines() if not LISTENING.match(l)]
        self.assertEqual(len(lines), 1, stderr)
        m = VERBOSE.match(lines[0])
        self.assertIsNotNone(m, lines[0])
        return int(m.group(1)), m.group(2)

    def zcio(self, proc_args, **kw):
        """Starts zcio in the background (killed in tearDown)."""
        return self.spawn([e2e.ZCIO] + [str(a) for a in proc_args], **kw)

    # ---- file → tcp ------------------------------------------------------------

    def test_file_to_tcp_uses_sendfile(self):
        src = self.path("big.bin")
        data = write_random_file(src, 12 * MiB + 321)
        up = self.upstream(sink_handler())
        rc, out, err = run_zcio(["copy", "--verbose", "file:" + src, "tcp:" + up.address], timeout=IO_TIMEOUT)
        self.assertEqual(rc, 0, err)
        rec = up.wait_connections(1)[0].wait()
        self.assertEqual(rec.n, len(data))
        self.assertEqual(rec.sha, sha(data))
        n, path = self.verbose_summary(err)
        self.assertEqual((n, path), (len(data), "sendfile"))

    # ---- tcp-listen → file -----------------------------------------------------

    def test_tcp_listen_to_file_uses_splice(self):
        dst = self.path("out.bin")
        port = e2e.free_port()
        p = self.zcio(["copy", "--verbose", "tcp-listen:127.0.0.1:%d" % port, "file:" + dst])
        e2e.wait_tcp_listening(port, proc=p)
        data = random_bytes(10 * MiB + 7)
        with socket.create_connection(("127.0.0.1", port), timeout=SHORT) as c:
            c.settimeout(IO_TIMEOUT)
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)
            recv_all(c)  # zcio closes when done
        self.assertEqual(p.wait(IO_TIMEOUT), 0, p.stderr_text())
        self.assertEqual(file_sha(dst), sha(data))
        n, path = self.verbose_summary(p.stderr_text())
        self.assertEqual((n, path), (len(data), "splice"))

    def test_tcp_listen_on_port_0_says_which_port(self):
        # `zcio copy -v tcp-listen:127.0.0.1:0 -`: the kernel picks the port, and the
        # "listening on" line (the wording of proxy, serve and udp-echo) is the only
        # way to learn it; without -v too.
        for verbose in (["-v"], []):
            with self.subTest(verbose=verbose):
                p = self.zcio(["copy"] + verbose + ["tcp-listen:127.0.0.1:0", "-"], stdout=subprocess.PIPE)
                m = p.wait_for(r"^zcio copy: listening on 127\.0\.0\.1:(\d+)$")[0]
                port = int(m.group(1))
                self.assertNotEqual(port, 0)
                data = random_bytes(3 * MiB + 11)
                with socket.create_connection(("127.0.0.1", port), timeout=SHORT) as c:
                    c.settimeout(IO_TIMEOUT)
                    sender = e2e.send_in_thread(c, data)
                    out = p.popen.stdout.read()  # until zcio exits and closes it
                    e2e.join_sender(sender)
                self.assertEqual(p.wait(IO_TIMEOUT), 0, p.stderr_text())
                self.assertEqual(sha(out), sha(data))
                if verbose:
                    self.assertEqual(self.verbose_summary(p.stderr_text())[0], len(data))
                else:
                    self.assertEqual(len(p.lines()), 1, p.stderr_text())

    def test_unix_listen_says_where_with_verbose(self):
        sock_path = self.path("where.sock")
        p = self.zcio(["copy", "-v", "unix-listen:" + sock_path, "file:" + self.path("out.bin")])
        p.wait_for(r"^zcio copy: listening on unix:%s$" % re.escape(sock_path))
        with self.connect("unix:" + sock_path) as c:
            c.sendall(b"hello")
            c.shutdown(socket.SHUT_WR)
            recv_all(c)
        self.assertEqual(p.wait(IO_TIMEOUT), 0, p.stderr_text())

    # ---- tcp → file, tcp → stdout ----------------------------------------------

    def test_tcp_source_to_file(self):
        data = random_bytes(5 * MiB)
        up = self.upstream(source_sink_handler(data))
        dst = self.path("from_tcp.bin")
        rc, out, err = run_zcio(["copy", "-v", "tcp:" + up.address, "file:" + dst], timeout=IO_TIMEOUT)
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(dst), sha(data))
        self.assertEqual(self.verbose_summary(err), (len(data), "splice"))

    def test_file_to_stdout(self):
        src = self.path("s.bin")
        data = write_random_file(src, 3 * MiB + 1)
        rc, out, err = run_zcio(["copy", "file:" + src, "-"], timeout=IO_TIMEOUT)
        self.assertEqual(rc, 0, err)
        self.assertEqual(err, "")
        self.assertEqual(sha(out), sha(data))

    # ---- pipe → tcp ------------------------------------------------------------

    def test_stdin_pipe_to_tcp_uses_splice(self):
        src = self.path("x.bin")
        data = write_random_file(src, 9 * MiB + 5)
        up = self.upstream(sink_handler())
        # `cat x | zcio copy - tcp:...`: stdin is a pipe.
        cat = subprocess.Popen(["cat", src], stdout=subprocess.PIPE, start_new_session=True)
        self._closers.append(lambda: (cat.kill(), cat.wait(SHORT)))
        p = self.zcio(["copy", "--verbose", "-", "tcp:" + up.address], stdin=cat.stdout)
        cat.stdout.close()
        # 9 MiB take well under a second; 30 s means it hangs. (Seen intermittently:
        # splice_direct in src/transfer/copy.cpp takes an EAGAIN from an empty pipe for
        # a full socket when `cat` refills the pipe before FIONREAD, then waits for a
        # writability edge that never comes.)
        self.assertEqual(p.wait(30), 0, p.stderr_text())
        self.assertEqual(cat.wait(SHORT), 0)
        rec = up.wait_connections(1)[0].wait()
        self.assertEqual(rec.sha, sha(data))
        self.assertEqual(self.verbose_summary(p.stderr_text()), (len(data), "splice"))

    # ---- file → file -----------------------------------------------------------

    def test_file_to_file_uses_copy_file_range(self):
        src, dst = self.path("a.bin"), self.path("b.bin")
        data = write_random_file(src, 20 * MiB + 99)
        with open(dst, "wb") as f:
            f.write(random_bytes(30 * MiB))  # longer than the source: must be truncated
        rc, out, err = run_zcio(["copy", "--verbose", "file:" + src, "file:" + dst], timeout=IO_TIMEOUT)
        self.assertEqual(rc, 0, err)
        self.assertEqual(os.path.getsize(dst), len(data))
        self.assertEqual(file_sha(dst), sha(data))
        self.assertEqual(self.verbose_summary(err), (len(data), "copy_file_range"))

    def test_sparse_file_keeps_its_holes(self):
        # A few random data extents between large holes, ending in a hole or in data:
        # the copy has the same bytes and about the source's blocks on disk, not the
        # full size (copy_file_range alone writes holes out as zeros on ext4 and tmpfs).
        rng = random.Random(0x5ba45e)
        for ends_in_hole in (True, False):
            with self.subTest(ends_in_hole=ends_in_hole):
                src, dst = self.path("sparse.bin"), self.path("copy.bin")
                size = 40 * MiB + rng.randrange(4096)
                with open(src, "wb") as f:
                    f.truncate(size)
                    slot = size // 4
                    for i in range(4):
                        n = rng.randrange(1, 256 * 1024)
                        at = i * slot + rng.randrange(slot - n)
                        if i == 3 and not ends_in_hole:
                            at = size - n
                        f.seek(at)
                        f.write(random_bytes(n))
                src_st = os.stat(src)
                if src_st.st_blocks * 512 >= size:
                    self.skipTest("the file system under %s keeps no holes" % self.tmp)
                rc, out, err = run_zcio(["copy", "-v", "file:" + src, "file:" + dst], timeout=IO_TIMEOUT)
                self.assertEqual(rc, 0, err)
                self.assertEqual(self.verbose_summary(err), (size, "copy_file_range"))
                dst_st = os.stat(dst)
                self.assertEqual(dst_st.st_size, size)
                self.assertEqual(file_sha(dst), file_sha(src))
                # Give or take a block at each end of each extent, and some metadata.
                self.assertLessEqual(dst_st.st_blocks, src_st.st_blocks + 128,
                                     "holes written out: %d bytes on disk, the source has %d"
                                     % (dst_st.st_blocks * 512, src_st.st_blocks * 512))

    def test_file_append(self):
        src, dst = self.path("tail.bin"), self.path("log.bin")
        head = random_bytes(1 * MiB + 3)
        with open(dst, "wb") as f:
            f.write(head)
        data = write_random_file(src, 2 * MiB + 11)
        rc, out, err = run_zcio(["copy", "-v", "file:" + src, "file:%s,append" % dst], timeout=IO_TIMEOUT)
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(dst), sha(head + data))
        self.assertEqual(self.verbose_summary(err)[0], len(data))
        # Twice: appends again.
        rc, out, err = run_zcio(["copy", "file:" + src, "file:%s,append" % dst], timeout=IO_TIMEOUT)
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(dst), sha(head + data + data))

    def test_append_creates_a_missing_file(self):
        src, dst = self.path("s.bin"), self.path("new.bin")
        data = write_random_file(src, 100000)
        rc, out, err = run_zcio(["copy", "file:" + src, "file:%s,append" % dst])
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(dst), sha(data))

    # ---- --limit ---------------------------------------------------------------

    def test_limit_file_to_file(self):
        src, dst = self.path("a.bin"), self.path("b.bin")
        data = write_random_file(src, 4 * MiB)
        rc, out, err = run_zcio(["copy", "-v", "--limit", "1M", "file:" + src, "file:" + dst])
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(dst), sha(data[:MiB]))
        self.assertEqual(self.verbose_summary(err)[0], MiB)
        rc, out, err = run_zcio(["copy", "--limit", "123457", "file:" + src, "file:" + dst])
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(dst), sha(data[:123457]))

    def test_limit_larger_than_the_source(self):
        src, dst = self.path("a.bin"), self.path("b.bin")
        data = write_random_file(src, 300000)
        rc, out, err = run_zcio(["copy", "--limit", "1G", "file:" + src, "file:" + dst])
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(dst), sha(data))

    def test_limit_stdin_to_stdout(self):
        data = random_bytes(2 * MiB)
        rc, out, err = run_zcio(["copy", "--limit", "64K", "-", "-"], input_bytes=data, timeout=IO_TIMEOUT)
        self.assertEqual(rc, 0, err)
        self.assertEqual(sha(out), sha(data[:65536]))

    def test_limit_tcp_to_file(self):
        data = random_bytes(3 * MiB)
        up = self.upstream(source_sink_handler(data))
        dst = self.path("lim.bin")
        rc, out, err = run_zcio(["copy", "--limit", "1000000", "tcp:" + up.address, "file:" + dst],
                                timeout=IO_TIMEOUT)
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(dst), sha(data[:1000000]))

    # ---- unix-listen / unix ----------------------------------------------------

    def test_unix_listen_and_unix(self):
        sock_path = self.path("copy.sock")
        src, dst = self.path("in.bin"), self.path("out.bin")
        data = write_random_file(src, 7 * MiB + 13)
        recv = self.zcio(["copy", "-v", "unix-listen:" + sock_path, "file:" + dst])
        e2e.wait_unix_listening(sock_path, proc=recv)
        rc, out, err = run_zcio(["copy", "-v", "file:" + src, "unix:" + sock_path], timeout=IO_TIMEOUT)
        self.assertEqual(rc, 0, err)
        self.assertEqual(recv.wait(IO_TIMEOUT), 0, recv.stderr_text())
        self.assertEqual(file_sha(dst), sha(data))
        self.assertEqual(self.verbose_summary(err), (len(data), "sendfile"))
        self.assertEqual(self.verbose_summary(recv.stderr_text()), (len(data), "splice"))

    # ---- engines ---------------------------------------------------------------

    def test_forced_buffer_engine(self):
        src, dst = self.path("a.bin"), self.path("b.bin")
        data = write_random_file(src, 5 * MiB + 1)
        rc, out, err = run_zcio(["copy", "-v", "--engine", "buffer", "file:" + src, "file:" + dst])
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(dst), sha(data))
        self.assertEqual(self.verbose_summary(err), (len(data), "buffer"))

    def test_empty_source(self):
        src, dst = self.path("empty"), self.path("b.bin")
        open(src, "wb").close()
        with open(dst, "wb") as f:
            f.write(b"old")
        rc, out, err = run_zcio(["copy", "-v", "file:" + src, "file:" + dst])
        self.assertEqual(rc, 0, err)
        self.assertEqual(os.path.getsize(dst), 0)
        self.assertEqual(self.verbose_summary(err)[0], 0)

    # ---- failures leave the destination alone ----------------------------------

    def existing_dst(self):
        dst = self.path("keep.bin")
        data = random_bytes(100000)
        with open(dst, "wb") as f:
            f.write(data)
        old = os.stat(dst)
        return dst, data, old

    def assertUntouched(self, dst, data, old):
        st = os.stat(dst)
        self.assertEqual(st.st_size, len(data), "destination truncated")
        self.assertEqual(file_sha(dst), sha(data), "destination changed")
        self.assertEqual(st.st_mtime_ns, old.st_mtime_ns, "destination written")

    def test_bad_endpoint_leaves_destination_untouched(self):
        src = self.path("s.bin")
        write_random_file(src, 1000)
        dst, data, old = self.existing_dst()
        time.sleep(0.02)  # so a write would show in mtime
        cases = [
            (["copy", "bogus:thing", "file:" + dst], 2, "bogus:thing"),
            (["copy", "tcp:127.0.0.1", "file:" + dst], 2, "127.0.0.1"),
            (["copy", "tcp:127.0.0.1:0", "file:" + dst], 2, "port 0"),
            (["copy", "file:" + src + ",append", "file:" + dst], 2, ",append"),
            (["copy", "--limit", "lots", "file:" + src, "file:" + dst], 2, "--limit"),
            (["copy", "--engine", "warp", "file:" + src, "file:" + dst], 2, "warp"),
            (["copy", "file:" + self.path("missing.bin"), "file:" + dst], 1, "missing.bin"),
            (["copy", "file:" + dst, "file:" + dst], 2, "same file"),
            (["copy", "tcp:127.0.0.1:%d" % e2e.free_port(), "file:" + dst], 1, "refused"),
        ]
        for args, code, needle in cases:
            with self.subTest(args=args):
                rc, out, err = run_zcio(args)
                self.assertEqual(rc, code, err)
                self.assertOneLine(err, needle)
                self.assertUntouched(dst, data, old)
        # A bad destination must not have been created either.
        new = self.path("never.bin")
        rc, out, err = run_zcio(["copy", "bogus:x", "file:" + new])
        self.assertEqual(rc, 2)
        self.assertFalse(os.path.exists(new))
        rc, out, err = run_zcio(["copy", "file:" + self.path("nope"), "file:" + new])
        self.assertEqual(rc, 1)
        self.assertOneLine(err, "nope")
        self.assertFalse(os.path.exists(new))

    def unreadable_file(self):
        """A file this process cannot open for reading: one without read permission, or
        for root (whom permissions do not stop) a write-only sysctl."""
        if os.geteuid() != 0:
            path = self.path("secret.bin")
            write_random_file(path, 1000)
            os.chmod(path, 0o200)
            return path
        path = "/proc/sys/vm/drop_caches"
        try:
            os.close(os.open(path, os.O_RDONLY))
        except PermissionError:
            return path
        self.skipTest("no file here that root cannot read")

    def test_unreadable_source_leaves_destination_untouched(self):
        # `zcio copy file:/tmp file:keep.txt` used to truncate keep.txt and then fail
        # with "read: Is a directory": the source is now opened and checked first.
        dst, data, old = self.existing_dst()
        time.sleep(0.02)  # so a write would show in mtime
        cases = [
            (self.tmp, "is a directory"),
            ("/", "is a directory"),
            (self.path("missing.bin"), "No such file"),
            (self.unreadable_file(), "Permission denied"),
        ]
        for src, why in cases:
            for dst_text in ("file:" + dst, "file:%s,append" % dst):
                with self.subTest(src=src, dst=dst_text):
                    rc, out, err = run_zcio(["copy", "file:" + src, dst_text])
                    self.assertEqual(rc, 1, err)
                    self.assertOneLine(err, "source", src, why)
                    self.assertUntouched(dst, data, old)
        new = self.path("never.bin")
        rc, out, err = run_zcio(["copy", "file:" + self.tmp, "file:" + new])
        self.assertEqual(rc, 1, err)
        self.assertFalse(os.path.exists(new), "a destination was created for a directory source")

    def test_fifo_source_with_a_bad_destination_fails_at_once(self):
        # The source file is opened only once both ends parsed: opening a FIFO waits
        # for a writer, and a usage error must not wait for one.
        fifo = self.path("in.fifo")
        os.mkfifo(fifo)
        rc, out, err = run_zcio(["copy", "file:" + fifo, "bogus:x"], timeout=SHORT)
        self.assertEqual(rc, 2, err)
        self.assertOneLine(err, "bogus:x")

    # ---- the reader of standard output goes away ---------------------------------

    def test_stdout_reader_gone_ends_quietly_like_cat(self):
        # `zcio copy file:/dev/urandom - | head -c 100`: like cat, killed by SIGPIPE with
        # no message (a shell says 141), not "copy failed ... Broken pipe" and exit 1.
        rc = subprocess.run(["bash", "-c", '"$0" copy file:/dev/urandom - | head -c 100 | wc -c; '
                             'echo "${PIPESTATUS[@]}" >&2', e2e.ZCIO],
                            capture_output=True, timeout=SHORT, start_new_session=True)
        self.assertEqual(rc.stdout.strip(), b"100")
        self.assertEqual(rc.stderr.decode().strip(), "141 0 0")
        for src in ("file:/dev/zero", "file:" + self.big_file()):
            with self.subTest(src=src):
                p = subprocess.Popen([e2e.ZCIO, "copy", src, "-"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
                self._closers.append(lambda p=p: (p.kill(), p.wait(SHORT)))
                self.assertEqual(len(p.stdout.read(100)), 100)
                p.stdout.close()
                self.assertEqual(p.wait(SHORT), -signal.SIGPIPE)
                with p.stderr:
                    self.assertEqual(p.stderr.read(), b"")

    def big_file(self):
        path = self.path("big-for-pipe.bin")
        if not os.path.exists(path):
            write_random_file(path, 8 * MiB)
        return path

    def test_stdout_reader_gone_with_sigpipe_ignored_is_an_error(self):
        # A parent that ignores SIGPIPE asks for write errors instead: cat then says
        # "write error: Broken pipe" and exits 1, and so does zcio (one line).
        p = subprocess.Popen([e2e.ZCIO, "copy", "file:/dev/zero", "-"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGPIPE, signal.SIG_IGN))
        self._closers.append(lambda: (p.kill(), p.wait(SHORT)))
        self.assertEqual(len(p.stdout.read(100)), 100)
        p.stdout.close()
        self.assertEqual(p.wait(SHORT), 1)
        with p.stderr:
            self.assertOneLine(p.stderr.read().decode(), "destination \"-\"", "Broken pipe")

    def test_runtime_failures_exit_1(self):
        src = self.path("s.bin")
        write_random_file(src, 1000)
        rc, out, err = run_zcio(["copy", "file:" + src, "file:" + self.path("no/such/dir/x")])
        self.assertEqual(rc, 1)
        self.assertOneLine(err, "no/such/dir/x")
        busy = socket.socket()
        self.track(busy)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        rc, out, err = run_zcio(["copy", "tcp-listen:127.0.0.1:%d" % busy.getsockname()[1], "-"])
        self.assertEqual(rc, 1)
        self.assertOneLine(err, str(busy.getsockname()[1]))


class LocalhostTcpTests(E2ETestCase):
    """`tcp:localhost:PORT` where localhost names ::1 first (Debian's default /etc/hosts)
    and the server listens on 127.0.0.1 only: the ::1 attempt is refused and the
    127.0.0.1 one carries the copy, where trying only the first address failed it."""

    def test_copy_from_and_to_an_ipv4_only_server_named_localhost(self):
        prefix = e2e.localhost_v6_first_prefix(self.tmp)
        if prefix is None:
            self.skipTest("cannot make localhost resolve to ::1 first here (no unshare?)")
        blob = random_bytes(4 * (1 << 20) + 7)
        source = self.upstream(e2e.source_sink_handler(blob))  # 127.0.0.1 only
        dst = self.path("from-localhost.bin")
        rc, _, err = run_zcio(["copy", "tcp:localhost:%d" % source.port, "file:" + dst], prefix=prefix)
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(dst), sha(blob))

        sink = self.upstream(e2e.sink_handler())
        rc, _, err = run_zcio(["copy", "file:" + dst, "tcp:localhost:%d" % sink.port], prefix=prefix)
        self.assertEqual(rc, 0, err)
        rec = sink.wait_connections(1)[0].wait()
        self.assertIsNone(rec.error)
        self.assertEqual(rec.sha, sha(blob))


if __name__ == "__main__":
    e2e.main()
