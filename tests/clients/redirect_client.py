"""A steered workload for the socket-level redirect tests (run inside the steered cgroup).

Subcommands, each printing one JSON object:
  echo ADDR TOTAL LINE NAME   send TOTAL bytes as LINE-byte lines to a TCP echo service while
                              reading its echo, half-close, read to EOF; compare byte for byte
  get_rst ADDR HOST           send a GET, then close with a reset (SO_LINGER 0)
  get_late ADDR HOST          send a GET (Connection: close), say "sent", read only after a
                              line arrives on stdin, then read to EOF
  get_poll ADDR HOST          send a GET and wait for the answer with epoll (selectors)
"""

import hashlib
import json
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
    else:
        sys.exit("unknown command " + cmd)
