// A uWebSockets broadcast peer for scripts/bench.sh (scenario `inflight`),
// speaking shardcast's raw-room convention as shardcast-bench's
// `shardcast-raw` target expects: a WebSocket on `/ws/<channel>[?...]`
// subscribes to the topic named by its URL path (`/ws/<channel>`, the query
// ignored) and publishes every message it receives to that topic, verbatim
// and with its opcode; like shardcast's `?echo=0`, a socket never gets its own
// publications back (uWS's `ws->publish` skips the publisher). One thread,
// no TLS, no compression, no pings, no idle timeout; 1 MiB of backpressure
// per socket, as shardcast's default `--max-queue-bytes` (over it uWS skips
// the frame, which the generator counts as lost).
//
//   server PORT        prints "listening on port PORT" once bound
//
// Built against uWebSockets and uSockets checkouts (see BENCHMARKS.md).
#include <cstdio>
#include <cstdlib>
#include <string>

#include "App.h"

struct PerSocket {
    std::string topic;
};

int main(int argc, char **argv) {
    int port = argc > 1 ? std::atoi(argv[1]) : 9001;
    uWS::App()
        .ws<PerSocket>("/*", {
            .compression = uWS::DISABLED,
            .maxPayloadLength = 16 * 1024 * 1024,
            .idleTimeout = 0,
            .maxBackpressure = 1 << 20,
            .closeOnBackpressureLimit = false,
            .resetIdleTimeoutOnSend = false,
            .sendPingsAutomatically = false,
            .upgrade = [](auto *res, auto *req, auto *context) {
                res->template upgrade<PerSocket>({.topic = std::string(req->getUrl())},
                    req->getHeader("sec-websocket-key"), req->getHeader("sec-websocket-protocol"),
                    req->getHeader("sec-websocket-extensions"), context);
            },
            .open = [](auto *ws) { ws->subscribe(ws->getUserData()->topic); },
            .message = [](auto *ws, std::string_view message, uWS::OpCode op) {
                ws->publish(ws->getUserData()->topic, message, op);
            },
        })
        .listen("127.0.0.1", port, [port](auto *listening) {
            if (!listening) {
                std::fprintf(stderr, "cannot listen on port %d\n", port);
                std::exit(1);
            }
            std::printf("listening on port %d\n", port);
            std::fflush(stdout);
        })
        .run();
}
