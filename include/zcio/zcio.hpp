// zcio.hpp: every public zcio header.
#pragma once

#include <zcio/accept_loop.hpp>
#include <zcio/balancer.hpp>
#include <zcio/buffer_pool.hpp>
#include <zcio/copy.hpp>
#include <zcio/copy_bidirectional.hpp>
#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/listener.hpp>
#include <zcio/loop_group.hpp>
#include <zcio/pipe_pool.hpp>
#include <zcio/proxy_protocol.hpp>
#include <zcio/relay.hpp>
#include <zcio/result.hpp>
#include <zcio/signal_set.hpp>
#include <zcio/slab.hpp>
#include <zcio/stream.hpp>
#include <zcio/sys.hpp>
#include <zcio/task.hpp>
#include <zcio/timeout.hpp>
#include <zcio/udp_batch.hpp>
#include <zcio/udp_echo.hpp>
#include <zcio/udp_forward.hpp>
#include <zcio/udp_socket.hpp>
#include <zcio/unique_fd.hpp>
