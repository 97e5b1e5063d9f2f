"""A gRPC client for weir's tests, on grpcio (raw bytes messages; the server is
grpc_server.py). One channel (one HTTP/2 connection) per run, grpcio's own retries off, so
that what the test sees is what weir did. Prints one JSON object.

  grpc_client.py shapes TARGET AUTHORITY
      unary (small and 1 MiB), server streaming, client streaming and interleaved bidi calls,
      each checked; {"ok": [...names...]}
  grpc_client.py calls TARGET AUTHORITY N [KEY=VALUE ...]
      N unary calls with that metadata; {"servers": {name: n}, "codes": {CODE: n},
      "details": [first distinct details]}
  grpc_client.py inspect TARGET AUTHORITY TIMEOUT_S [KEY=VALUE ...]
      one Inspect call; {"code": CODE, "seen": what the server saw, "trailers": {...}}
  grpc_client.py loop TARGET AUTHORITY RATE SECONDS
      unary calls at RATE per second for SECONDS (the demo's gRPC workload), one line per
      second: calls, status codes, p50/p99, which server answered
"""

import json
import os
import queue
import sys
import threading

import grpc

METHOD = "/weir.test.Echo/"


def channel(target, authority):
    opts = [("grpc.enable_retries", 0), ("grpc.max_receive_message_length", 64 << 20)]
    if authority != "-":
        opts.append(("grpc.default_authority", authority))
    return grpc.insecure_channel(target, options=opts)


def server_of(call):
    for k, v in list(call.initial_metadata() or ()) + list(call.trailing_metadata() or ()):
        if k == "x-server":
            return v
    return None


def shapes(ch):
    ok = []
    unary = ch.unary_unary(METHOD + "Unary")
    assert unary(b"hello", timeout=10) == b"hello"
    big = os.urandom(1 << 20)
    assert unary(big, timeout=20) == big
    ok.append("unary")
    got = list(ch.unary_stream(METHOD + "ServerStream")(bytes([5]), timeout=10))
    assert got == [bytes([5, i]) for i in range(5)], got
    ok.append("server_streaming")
    parts = [os.urandom(256 << 10) for _ in range(3)]
    assert ch.stream_unary(METHOD + "ClientStream")(iter(parts), timeout=20) == b"".join(parts)
    ok.append("client_streaming")
    # Interleaved: each message is sent only after the previous echo came back, so the call
    # is truly bidirectional through weir (nothing could be buffered whole).
    q = queue.Queue()
    sent = []

    def requests():
        for i in range(10):
            m = os.urandom(1000 + i)
            sent.append(m)
            yield m
            q.get(timeout=10)

    echoes = []
    for r in ch.stream_stream(METHOD + "Bidi")(requests(), timeout=20):
        echoes.append(r)
        q.put(None)
    assert echoes == sent
    ok.append("bidi")
    return {"ok": ok}


def calls(ch, n, md):
    unary = ch.unary_unary(METHOD + "Unary")
    servers, codes, details = {}, {}, []
    for i in range(n):
        try:
            _, call = unary.with_call(b"x%d" % i, timeout=10, metadata=md)
            code = "OK"
        except grpc.RpcError as e:
            call = e
            code = e.code().name
            if e.details() not in details and len(details) < 5:
                details.append(e.details())
        codes[code] = codes.get(code, 0) + 1
        s = server_of(call)
        if s:
            servers[s] = servers.get(s, 0) + 1
    return {"servers": servers, "codes": codes, "details": details}


def inspect(ch, timeout, md):
    try:
        resp, call = ch.unary_unary(METHOD + "Inspect").with_call(b"", timeout=timeout, metadata=md)
        return {"code": "OK", "seen": json.loads(resp), "trailers": dict(call.trailing_metadata() or ())}
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details(), "trailers": dict(e.trailing_metadata() or ())}


def loop(ch, rate, seconds):
    import time

    unary = ch.unary_unary(METHOD + "Unary")
    interval = 1.0 / max(rate, 1)
    start = time.monotonic()
    end = start + seconds
    next_send, next_print = start, start + 1
    lat, codes, servers = [], {}, {}
    while time.monotonic() < end:
        now = time.monotonic()
        if now < next_send:
            time.sleep(next_send - now)  # the workload's call rate
        next_send += interval
        t0 = time.monotonic()
        try:
            _, call = unary.with_call(b"hi", timeout=5)
            code = "OK"
        except grpc.RpcError as e:
            call, code = e, e.code().name
        lat.append(time.monotonic() - t0)
        codes[code] = codes.get(code, 0) + 1
        s = server_of(call)
        if s:
            servers[s] = servers.get(s, 0) + 1
        if time.monotonic() >= next_print:
            lat.sort()
            q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
            print(
                f"grpc   t={int(time.monotonic() - start):>3}s  calls={len(lat):<5} codes={dict(sorted(codes.items()))} "
                f"p50={q(0.5):.2f}ms p99={q(0.99):.2f}ms  by server: {dict(sorted(servers.items()))}",
                flush=True,
            )
            lat, codes, servers = [], {}, {}
            next_print += 1
    return {"done": True}


def metadata(args):
    return tuple(tuple(a.split("=", 1)) for a in args)


def main():
    cmd, target, authority = sys.argv[1], sys.argv[2], sys.argv[3]
    rest = sys.argv[4:]
    with channel(target, authority) as ch:
        if cmd == "shapes":
            out = shapes(ch)
        elif cmd == "calls":
            out = calls(ch, int(rest[0]), metadata(rest[1:]))
        elif cmd == "inspect":
            out = inspect(ch, float(rest[0]), metadata(rest[1:]))
        elif cmd == "loop":
            out = loop(ch, int(rest[0]), float(rest[1]))
        else:
            raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
