"""A steered workload for the socket-level redirect tests (run inside the steered cgroup).

Subcommands, each printing one JSON object:
  echo ADDR TOTAL LINE NAME   send TOTAL bytes as LINE-byte lines to a TCP echo service while
                              reading its echo, half-close, read to EOF; compare byte for byte
  get_rst ADDR HOST           send a GET, then close with a reset (SO_LINGER 0)
  get_late ADDR HOST          send a GET (Connection: close), say "sent", read only after a
                              line arrives on stdin, then read to EOF
  get_poll ADDR HOST          send a GET and wait for the answer with epoll (selectors)
  get_keepalive ADDR HOST N   N GETs on one keep-alive connection, each read whole
  get_cut ADDR HOST           a GET for /bytes/100000 whose answer the endpoint cuts with a
                              reset halfway: read what arrives until EOF or the reset
  post_half ADDR HOST SIZE    a POST announcing SIZE body bytes that sends half of them and
                              half-closes (the peer closes mid-message), then reads to EOF
  get_slow ADDR HOST SIZE     a GET for /bytes/SIZE; say "queued N" once 64 KiB wait unread,
                              read nothing more until a line arrives on stdin, then read all
  get_splice ADDR HOST SIZE   a GET for /bytes/SIZE (Connection: close) read with splice(2)
                              into a pipe (as a zero-copy proxy reads), bounded in time
Every result carries the socket's TCP_INFO byte counts (`tcp_received`, `tcp_acked`): what
took the TCP path (redirected bytes do not count there).
"""

import fcntl
import hashlib
import json
import os
import selectors
import socket
import struct
import sys
import threading
import time


def connect(addr):
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host.strip("[]"), int(port)), timeout=60)


def read_to_eof(s):
    chunks = []
    while True:
        b = s.recv(65536)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def echo(addr, total, line, name):
    s = connect(addr)
    lines = []
    n = 0
    i = 0
    while n < total:
        size = min(line, total - n)
        body = (b"%08d" % i * (size // 8 + 1))[: size - 1] + b"\n"
        lines.append(body)
        n += size
        i += 1
    want = hashlib.sha256()
    want_len = 0
    for body in lines:
        want.update(b"echo:" + name.encode() + b":" + body)
        want_len += len(name) + 6 + len(body)
    tail = b"bye:" + name.encode() + b"\n"
    want.update(tail)
    want_len += len(tail)
    got = hashlib.sha256()
    got_len = [0]

    def reader():
        while True:
            b = s.recv(1 << 20)
            if not b:
                return
            got.update(b)
            got_len[0] += len(b)

    t = threading.Thread(target=reader)
    t.start()
    for body in lines:
        s.sendall(body)
    s.shutdown(socket.SHUT_WR)
    t.join(120)
    print(json.dumps({"sent": n, "received": got_len[0], "want": want_len,
                      "ok": got.hexdigest() == want.hexdigest(), "eof": not t.is_alive()}))


def tcp_bytes(s):
    """(bytes_acked, bytes_received) of struct tcp_info (u64s at offsets 120 and 128)."""
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("QQ", info, 120)


def with_tcp(s, result):
    acked, received = tcp_bytes(s)
    result["tcp_acked"] = acked
    result["tcp_received"] = received
    return result


def read_to_eof_or_reset(s):
    chunks = []
    reset = False
    while True:
        try:
            b = s.recv(65536)
        except ConnectionResetError:
            reset = True
            break
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks), reset


def read_response(s, buf=b""):
    """One Content-Length response from s; (status, body, rest)."""
    while b"\r\n\r\n" not in buf:
        b = s.recv(65536)
        if not b:
            return 0, b"", b""
        buf += b
    status, length, body = parse(buf)
    while len(body) < length:
        b = s.recv(1 << 20)
        if not b:
            break
        body += b
    return status, body[:length], body[length:]


def request(host):
    return ("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host).encode()


def parse(data):
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    length = None
    for h in head.split(b"\r\n")[1:]:
        k, _, v = h.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    return status, length, body


def get_rst(addr, host):
    s = connect(addr)
    s.sendall(request(host))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    print(json.dumps({"sent": True}))


def get_late(addr, host):
    s = connect(addr)
    s.sendall(request(host))
    print("sent", flush=True)
    sys.stdin.readline()
    status, length, body = parse(read_to_eof(s))
    print(json.dumps({"status": status, "length": length, "body": len(body), "complete": length == len(body)}))


def get_poll(addr, host):
    s = connect(addr)
    s.setblocking(False)
    s.sendall(request(host))
    sel = selectors.EpollSelector()
    sel.register(s, selectors.EVENT_READ)
    t0 = time.monotonic()
    data = b""
    while True:
        if not sel.select(timeout=10):
            print(json.dumps({"ok": False, "woken": False, "waited_ms": int((time.monotonic() - t0) * 1000)}))
            return
        b = s.recv(65536)
        if not b:
            break
        data += b
    status, length, body = parse(data)
    print(json.dumps({"ok": status == 200 and length == len(body), "woken": True,
                      "waited_ms": int((time.monotonic() - t0) * 1000)}))


def get_keepalive(addr, host, n):
    s = connect(addr)
    ok = 0
    for _ in range(n):
        s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode())
        status, body, rest = read_response(s)
        ok += status == 200 and body.startswith(b"hello from") and not rest
    print(json.dumps(with_tcp(s, {"ok": ok})))


def get_cut(addr, host):
    s = connect(addr)
    s.sendall(("GET /bytes/100000 HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode())
    data, reset = read_to_eof_or_reset(s)
    status, length, body = parse(data)
    print(json.dumps(with_tcp(s, {"status": status, "length": length, "body": len(body),
                                  "all_x": body == b"x" * len(body), "reset": reset})))


def post_half(addr, host, size):
    s = connect(addr)
    s.sendall(("POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (host, size)).encode())
    s.sendall(b"y" * (size // 2))
    s.shutdown(socket.SHUT_WR)
    data, reset = read_to_eof_or_reset(s)
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    print(json.dumps(with_tcp(s, {"status": status, "bytes": len(data), "reset": reset})))


def queued(s):
    return struct.unpack("i", fcntl.ioctl(s.fileno(), 0x541B, b"\0\0\0\0"))[0]  # FIONREAD


def get_slow(addr, host, size):
    s = connect(addr)
    s.sendall(("GET /bytes/%d HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (size, host)).encode())
    deadline = time.monotonic() + 60
    while queued(s) < 65536 and time.monotonic() < deadline:
        time.sleep(0.005)  # polls the queue's length (observable state), bounded above
    print("queued %d" % queued(s), flush=True)
    sys.stdin.readline()
    at_read = queued(s)
    data = read_to_eof(s)
    status, length, body = parse(data)
    print(json.dumps(with_tcp(s, {"status": status, "length": length, "body": len(body), "total": len(data),
                                  "all_x": body.count(b"x") == len(body), "queued_at_read": at_read})))


def get_splice(addr, host, size):
    s = connect(addr)
    s.sendall(("GET /bytes/%d HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (size, host)).encode())
    s.setblocking(False)
    r, w = os.pipe()
    sel = selectors.EpollSelector()
    sel.register(s, selectors.EVENT_READ)
    data = b""
    eof = False
    deadline = time.monotonic() + 10
    while not eof and time.monotonic() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        try:
            n = os.splice(s.fileno(), w, 65536, flags=os.SPLICE_F_NONBLOCK)
        except BlockingIOError:
            continue  # readable but nothing for splice: wait for the next wake-up
        if n == 0:
            eof = True
        while n > 0:
            chunk = os.read(r, n)
            data += chunk
            n -= len(chunk)
    pending = queued(s)
    status, length, body = parse(data) if data else (None, None, b"")
    print(json.dumps(with_tcp(s, {"status": status, "length": length, "body": len(body), "eof": eof,
                                  "spliced": len(data), "queued_after": pending})))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "echo":
        echo(args[0], int(args[1]), int(args[2]), args[3])
    elif cmd == "get_rst":
        get_rst(*args)
    elif cmd == "get_late":
        get_late(*args)
    elif cmd == "get_poll":
        get_poll(*args)
    elif cmd == "get_keepalive":
        get_keepalive(args[0], args[1], int(args[2]))
    elif cmd == "get_cut":
        get_cut(*args)
    elif cmd == "post_half":
        post_half(args[0], args[1], int(args[2]))
    elif cmd == "get_slow":
        get_slow(args[0], args[1], int(args[2]))
    elif cmd == "get_splice":
        get_splice(args[0], args[1], int(args[2]))
    else:
        sys.exit("unknown command " + cmd)
