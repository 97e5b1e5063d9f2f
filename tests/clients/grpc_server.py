"""A gRPC endpoint for weir's tests, on grpcio (no generated code: raw bytes messages).

Service `weir.test.Echo`: Unary echoes its request; ServerStream sends the request back N
times (N = first byte); ClientStream answers the concatenation of what it received; Bidi
echoes each message as it arrives; Inspect answers a JSON object of what the server saw (the
request metadata, `grpc-timeout` as time remaining, the caller's peer). Every successful
response carries the server's name in `x-server` initial metadata; a failed call carries it in
its trailers, and sends no initial metadata so that it is trailers-only. Request metadata
steers failures: `x-status: <code>` ends the call with that status (`x-pushback-ms` adds
`grpc-retry-pushback-ms`), `x-sleep-ms` delays the answer. `--status CODE` makes every call
fail with CODE (an unhealthy server). `--port` picks the port (default: any free one).

Prints `port <n>` on stdout once it serves, then serves until stdin closes.
"""

import argparse
import json
import sys
import time
from concurrent import futures

import grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="server")
    ap.add_argument("--status", type=int, default=None)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    codes = {c.value[0]: c for c in grpc.StatusCode}

    def prelude(context):
        md = dict(context.invocation_metadata())
        if "x-sleep-ms" in md:
            time.sleep(int(md["x-sleep-ms"]) / 1000)
        code = args.status if args.status is not None else (int(md["x-status"]) if "x-status" in md else None)
        if code is not None and code != 0:
            trailers = [("x-server", args.name)]
            if "x-pushback-ms" in md:
                trailers.append(("grpc-retry-pushback-ms", md["x-pushback-ms"]))
            context.set_trailing_metadata(tuple(trailers))
            context.abort(codes[code], f"status {code} from {args.name}")
        context.send_initial_metadata((("x-server", args.name),))

    def unary(request, context):
        prelude(context)
        return request

    def inspect(request, context):
        prelude(context)
        seen = {
            "metadata": [[k, v if isinstance(v, str) else v.hex()] for k, v in context.invocation_metadata()],
            "time_remaining": context.time_remaining(),
            "server": args.name,
        }
        return json.dumps(seen).encode()

    def server_stream(request, context):
        prelude(context)
        n = request[0] if request else 1
        for i in range(n):
            yield request + bytes([i])

    def client_stream(request_iterator, context):
        prelude(context)
        return b"".join(request_iterator)

    def bidi(request_iterator, context):
        prelude(context)
        for r in request_iterator:
            yield r

    handler = grpc.method_handlers_generic_handler(
        "weir.test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Inspect": grpc.unary_unary_rpc_method_handler(inspect),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32),
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"port {port}", flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
