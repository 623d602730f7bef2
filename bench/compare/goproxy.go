//go:build ignore

// goproxy: the Go peer of `make compare` (bench/compare/compare.py).
//
// The plain Go way to write a TCP proxy: one goroutine per direction, each an
// io.Copy, then CloseWrite so a half-close reaches the other side. With two
// *net.TCPConn, io.Copy goes through TCPConn.ReadFrom, which splices (Go 1.19:
// socket -> pooled pipe -> socket) and falls back to a user-space copy when it
// cannot. The `ignore` build tag keeps this file and loadgen.go two separate
// programs in one directory; build it with
//
//	go build -o tmp/bin/goproxy goproxy.go
//
// usage: goproxy -listen 127.0.0.1:PORT -upstream 127.0.0.1:PORT
// compare.py runs it with GOMAXPROCS=1 (one core, as every other proxy there).
package main

import (
	"flag"
	"io"
	"log"
	"net"
	"os"
	"time"
)

func main() {
	listen := flag.String("listen", "", "address to accept clients on")
	upstream := flag.String("upstream", "", "address to relay each client to")
	flag.Parse()
	if *listen == "" || *upstream == "" {
		flag.Usage()
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			// EMFILE and the like: back off and go on, as net/http does.
			log.Printf("accept: %v", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go relay(c.(*net.TCPConn), *upstream)
	}
}

func relay(client *net.TCPConn, upstream string) {
	u, err := net.DialTimeout("tcp", upstream, 5*time.Second)
	if err != nil {
		client.Close()
		return
	}
	up := u.(*net.TCPConn)
	done := make(chan struct{})
	go func() {
		copyHalf(up, client)
		close(done)
	}()
	copyHalf(client, up)
	<-done
	client.Close()
	up.Close()
}

// copyHalf copies src to dst until EOF, then passes the half-close on. On an
// error (a reset) it closes both, so the other direction ends too.
func copyHalf(dst, src *net.TCPConn) {
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		src.Close()
		return
	}
	dst.CloseWrite()
}
