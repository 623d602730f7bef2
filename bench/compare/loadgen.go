//go:build ignore

// loadgen: the clients and upstream servers of `make compare` that iperf3 and
// sockperf do not cover (bench/compare/compare.py starts them). Built with
//
//	go build -o tmp/bin/loadgen loadgen.go
//
// Modes:
//
//	rr-server   -listen ADDR [-req 64] [-resp 64]
//	    per connection: read -req bytes, write -resp bytes, close.
//	rr-client   -addr ADDR [-c 16] [-seconds 3] [-req 64] [-resp 64]
//	    -c goroutines, each: connect, send -req bytes, read the reply to EOF,
//	    close, again, for -seconds; prints one JSON line with the count.
//	hold-server -listen ADDR
//	    accepts and holds every connection, echoing whatever it reads.
//	hold-client -addr ADDR [-n 5000] [-par 64] [-msg 64] [-open-timeout 30s]
//	    opens -n connections (-par at a time), prints "open OK FAILED", then
//	    obeys stdin: "echo" sends -msg bytes on every connection and reads them
//	    back, printing "echoed OK FAILED"; "quit" or EOF resets all (SO_LINGER 0)
//	    and exits.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadgen rr-server|rr-client|hold-server|hold-client [flags]")
		os.Exit(2)
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	listen := fs.String("listen", "", "address to listen on (servers)")
	addr := fs.String("addr", "", "address to connect to (clients)")
	req := fs.Int("req", 64, "request bytes")
	resp := fs.Int("resp", 64, "reply bytes")
	conc := fs.Int("c", 16, "concurrent connections (rr-client)")
	seconds := fs.Float64("seconds", 3, "run time (rr-client)")
	n := fs.Int("n", 5000, "connections to open (hold-client)")
	par := fs.Int("par", 64, "connects in flight at once (hold-client)")
	msg := fs.Int("msg", 64, "bytes echoed per connection (hold-client)")
	openTimeout := fs.Duration("open-timeout", 30*time.Second, "give up opening after this long (hold-client)")
	fs.Parse(os.Args[2:])

	switch mode {
	case "rr-server":
		serve(*listen, func(c net.Conn) { rrServe(c, *req, *resp) })
	case "hold-server":
		serve(*listen, func(c net.Conn) {
			// Reset rather than FIN when the connection ends: no TIME_WAIT
			// sockets linger into the next measurement's kernel memory.
			c.(*net.TCPConn).SetLinger(0)
			holdServe(c)
		})
	case "rr-client":
		rrClient(*addr, *conc, *seconds, *req, *resp)
	case "hold-client":
		holdClient(*addr, *n, *par, *msg, *openTimeout)
	default:
		fmt.Fprintf(os.Stderr, "loadgen: unknown mode %q\n", mode)
		os.Exit(2)
	}
}

func serve(addr string, handle func(net.Conn)) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Printf("accept: %v", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go handle(c)
	}
}

func rrServe(c net.Conn, req, resp int) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, max(req, resp))
	if _, err := io.ReadFull(c, buf[:req]); err != nil {
		return
	}
	c.Write(buf[:resp])
}

func holdServe(c net.Conn) {
	defer c.Close()
	// A plain buffer loop, not io.Copy: io.Copy between two TCP sockets would
	// splice through a pipe and hold one per connection in this process.
	buf := make([]byte, 512)
	for {
		k, err := c.Read(buf)
		if k > 0 {
			if _, werr := c.Write(buf[:k]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func rrClient(addr string, conc int, seconds float64, req, resp int) {
	var ok, failed int64
	var firstErr atomic.Value
	stop := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	cpu0 := cpuSeconds()
	t0 := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := make([]byte, req)
			in := make([]byte, resp+1)
			for time.Now().Before(stop) {
				if err := rrOnce(addr, out, in, resp); err != nil {
					atomic.AddInt64(&failed, 1)
					firstErr.CompareAndSwap(nil, err.Error())
					time.Sleep(time.Millisecond)
					continue
				}
				atomic.AddInt64(&ok, 1)
			}
		}()
	}
	wg.Wait()
	wall := time.Since(t0).Seconds()
	res := map[string]any{
		"conns": ok, "errors": failed, "seconds": wall,
		"conns_per_s": float64(ok) / wall, "client_cpu_s": cpuSeconds() - cpu0,
		"concurrency": conc,
	}
	if e := firstErr.Load(); e != nil {
		res["first_error"] = e
	}
	json.NewEncoder(os.Stdout).Encode(res)
}

func rrOnce(addr string, out, in []byte, resp int) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(out); err != nil {
		return err
	}
	got := 0
	for {
		k, err := c.Read(in[got:])
		got += k
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if got > resp {
			return fmt.Errorf("reply longer than %d bytes", resp)
		}
	}
	if got != resp {
		return fmt.Errorf("reply of %d bytes, want %d", got, resp)
	}
	return nil
}

// parallel runs f(i) for i in [0, n) on par goroutines; returns successes and failures.
func parallel(n, par int, f func(i int) bool) (int64, int64) {
	var ok, failed int64
	next := int64(-1)
	var wg sync.WaitGroup
	for w := 0; w < par; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(atomic.AddInt64(&next, 1))
				if i >= n {
					return
				}
				if f(i) {
					atomic.AddInt64(&ok, 1)
				} else {
					atomic.AddInt64(&failed, 1)
				}
			}
		}()
	}
	wg.Wait()
	return ok, failed
}

func holdClient(addr string, n, par, msg int, openTimeout time.Duration) {
	conns := make([]net.Conn, n)
	deadline := time.Now().Add(openTimeout)
	ok, failed := parallel(n, par, func(i int) bool {
		if time.Now().After(deadline) {
			return false
		}
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return false
		}
		conns[i] = c
		return true
	})
	fmt.Printf("open %d %d\n", ok, failed)
	defer func() {
		// Reset every connection (SO_LINGER 0): no TIME_WAIT sockets are left
		// behind to skew the next measurement's kernel memory.
		for _, c := range conns {
			if c != nil {
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}
		}
	}()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "echo":
			out := make([]byte, msg)
			for i := range out {
				out[i] = byte('a' + i%26)
			}
			// Many at a time, with a short deadline: connections that wait in
			// the accept queue of a proxy out of file descriptors never answer.
			ok, failed := parallel(n, max(par, 512), func(i int) bool {
				c := conns[i]
				if c == nil {
					return false
				}
				c.SetDeadline(time.Now().Add(time.Second))
				defer c.SetDeadline(time.Time{})
				if _, err := c.Write(out); err != nil {
					return false
				}
				back := make([]byte, msg)
				_, err := io.ReadFull(c, back)
				return err == nil
			})
			fmt.Printf("echoed %d %d\n", ok, failed)
		case "quit":
			return
		}
	}
}

func max(a, b int) int {
	if a > b {
		return a
	}
	return b
}
