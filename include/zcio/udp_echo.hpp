// udp_echo: a UDP echo service on one socket: every datagram goes back to its sender.
//
// Reads and writes are multiplexed: a reader keeps reading into a bounded outgoing
// queue while a writer sends from it whenever the socket is writable. A send that
// waits (EAGAIN) never stops the reads; when the queue is full, new datagrams are read
// anyway, dropped and counted, so memory never grows past the queue.
#pragma once

#include <zcio/result.hpp>
#include <zcio/task.hpp>
#include <zcio/udp_socket.hpp>

#include <cstddef>
#include <cstdint>

namespace zcio {

enum class udp_echo_mode {
    batch,  // recvmmsg / sendmmsg, with GRO and GSO where the kernel has them
    simple, // one recvmsg and one sendto per datagram: the baseline
};

enum class udp_offload {
    automatic, // UDP_GRO and UDP_SEGMENT where the kernel accepts them
    on,        // required: udp_echo() fails when the kernel lacks either
    off,
};

struct udp_echo_options {
    udp_echo_mode mode = udp_echo_mode::batch;
    // Datagrams per recvmmsg / sendmmsg (batch mode), 1 to 1024.
    std::size_t batch = 64;
    // Datagrams waiting to be echoed, at most (a GRO buffer counts as its datagrams).
    std::size_t queue = 1024;
    // Bytes waiting to be echoed, at most; 0: queue × 2 KiB, at least 256 KiB.
    std::size_t queue_bytes = 0;
    // UDP_GRO on receive and UDP_SEGMENT on send (batch mode only).
    udp_offload gso = udp_offload::automatic;
    // Datagrams the reader takes in before it lets the loop's other tasks run once:
    // with edge-triggered readiness a flooded socket would otherwise never yield.
    std::size_t yield_after = 1024;
};

// What one echo did. Written by the loop's thread only; read it there too (a
// stats timer on the same loop), or after the loop stopped.
struct udp_echo_counters {
    std::uint64_t received = 0;    // datagrams read (a GRO buffer counts as its datagrams)
    std::uint64_t echoed = 0;      // datagrams sent back
    std::uint64_t dropped = 0;     // datagrams dropped because the queue was full
    std::uint64_t send_errors = 0; // datagrams dropped because the kernel refused them
    std::uint64_t recv_calls = 0;  // recvmmsg / recvmsg calls that returned data
    std::uint64_t send_calls = 0;  // sendmmsg / sendto calls
    bool gro = false;              // UDP_GRO was in use (it is turned off if GSO is refused)
    bool gso = false;              // UDP_SEGMENT was in use
};

// Echoes every datagram that arrives on `sock` to its sender, unchanged, until the
// task is destroyed (cancellation: with_cancel, with_timeout, or the loop going away),
// which also closes the socket, or until the socket fails in a way that reading cannot
// go on from; then it returns that error. `counters` must outlive the task. With
// options.gso == on it fails at once, with ENOPROTOOPT, when the kernel lacks UDP_GRO
// or UDP_SEGMENT for this socket.
task<result<void>> udp_echo(udp_socket sock, udp_echo_options options, udp_echo_counters* counters);

} // namespace zcio
