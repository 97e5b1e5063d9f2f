"""HTTP/2 clients that misbehave on purpose, frame by frame (Python's `h2` and `hyperframe`),
for weir's abuse-defence tests. Each subcommand connects to ADDR (IP:PORT, h2c with prior
knowledge), asks for :authority HOST, does its one thing within bounded counts and time, and
prints one result line of `key=value` pairs on stdout for the test to check.

  streams ADDR HOST N            sends N requests at once, before reading the server's SETTINGS
                                 (so before it knows the limit): ok=, refused=, other=
  big-headers ADDR HOST SIZE     a request with a SIZE-byte header, then (if the connection
                                 lives) a normal one: first=, second=
  rapid-reset ADDR HOST STREAMS SECONDS [BATCH]
                                 HEADERS + RST_STREAM per stream in a tight loop (BATCH pairs per
                                 write, 16 by default), reconnecting whenever weir closes the
                                 connection, until STREAMS streams or SECONDS: connections=,
                                 lost=, streams=, goaway=
  reset-after-accept ADDR HOST N ROUNDS [WAIT]
                                 ROUNDS times: opens N streams, prints `opened round=R`, waits
                                 for a line on stdin (the test saw them forwarded), resets them;
                                 then opens N more and waits up to WAIT seconds for them to be
                                 reset: refused=, other=, closed=
  continuation ADDR HOST FRAMES SIZE
                                 HEADERS without END_HEADERS, then up to FRAMES CONTINUATION
                                 frames of SIZE bytes each: frames=, closed=, goaway=, debug=
  flood ADDR HOST KIND COUNT     up to COUNT frames of KIND (ping, settings, priority,
                                 window-update, empty-data, rst: the same stream reset again and
                                 again) while reading what weir answers:
                                 sent=, closed=, goaway=
  busy ADDR HOST REQUESTS PATH   a well-behaved but chatty client: 8 streams at a time, a
                                 WINDOW_UPDATE for every DATA frame and a PING per response (as
                                 BDP-estimating gRPC clients do): ok=, failed=, goaway=
  zero-window ADDR HOST PATH     SETTINGS_INITIAL_WINDOW_SIZE = 0, then one request: status=,
                                 reset=, data=
  idle ADDR HOST                 one request, then reads (answering PINGs) until weir closes the
                                 idle connection: status=, goaway=, closed=
  never-read ADDR HOST PATH      opens every window wide, asks for PATH, then reads nothing until
                                 stdin closes (prints `asked` first); then reads what is left:
                                 bytes=, eof=
  pause-read ADDR HOST PATH SIZE opens every window wide, asks for PATH, reads nothing until a line
                                 arrives on stdin (prints `asked` first), then reads the response
                                 until SIZE data bytes, a reset or the end: status=, data=,
                                 reset=, goaway=, closed=

Every socket has a timeout, so a script never hangs a test.
"""

import socket
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TIMEOUT = 20.0
GOAWAY, RST_STREAM, SETTINGS, PING, HEADERS, DATA = 7, 3, 4, 6, 1, 0


def connect(addr, rcvbuf=None):
    host, port = addr.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(TIMEOUT)
    s.connect((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def h2_client():
    return h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))


def request_headers(host, path="/", method="GET", extra=()):
    return [(":method", method), (":scheme", "http"), (":authority", host), (":path", path), *extra]


def out(**kv):
    print(" ".join(f"{k}={v}" for k, v in kv.items()), flush=True)


class Frames:
    """A minimal reader of the server's frames (for connections the `h2` state machine cannot
    follow, because frames were written around it): acknowledges SETTINGS, remembers GOAWAY,
    RST_STREAM and response statuses, and notices the close."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""
        self.decoder = hpack.Decoder()
        self.goaway = None  # (error code, debug data)
        self.resets, self.statuses, self.data = {}, {}, {}
        self.closed = False  # the read side ended (EOF, reset)
        self.broken = False  # a write failed: weir closed; what it wrote before is still to read

    def pump(self, block):
        """Reads what is there (waiting up to the socket timeout when `block`); False once the
        connection is closed."""
        if self.closed:
            return False
        self.sock.setblocking(block)
        if block:
            self.sock.settimeout(TIMEOUT)
        try:
            data = self.sock.recv(1 << 18)
        except (BlockingIOError, InterruptedError):
            return True
        except (ConnectionResetError, BrokenPipeError, socket.timeout):
            self.closed = True
            return False
        finally:
            self.sock.setblocking(True)
            self.sock.settimeout(TIMEOUT)
        if not data:
            self.closed = True
            return False
        self.buf += data
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                break
            kind, flags = self.buf[3], self.buf[4]
            stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            payload, self.buf = self.buf[9 : 9 + length], self.buf[9 + length :]
            if kind == SETTINGS and not flags & 1:
                self.send(SettingsFrame(0, flags=["ACK"]).serialize())
            elif kind == PING and not flags & 1:
                self.send(PingFrame(0, opaque_data=payload, flags=["ACK"]).serialize())
            elif kind == GOAWAY:
                self.goaway = (struct.unpack(">I", payload[4:8])[0], payload[8:].decode("latin-1"))
            elif kind == DATA:
                self.data[stream] = self.data.get(stream, 0) + length
            elif kind == RST_STREAM:
                self.resets[stream] = struct.unpack(">I", payload[:4])[0]
            elif kind == HEADERS:
                block = payload
                if flags & 0x8:  # PADDED
                    block = block[1 : len(block) - block[0]]
                if flags & 0x20:  # PRIORITY
                    block = block[5:]
                try:
                    fields = dict(self.decoder.decode(block))
                except Exception:
                    fields = {}
                status = fields.get(":status", fields.get(b":status"))
                if status is not None:
                    self.statuses[stream] = int(status)
        return True

    def send(self, data):
        if self.broken:
            return False
        try:
            self.sock.sendall(data)
            return True
        except (ConnectionResetError, BrokenPipeError, socket.timeout):
            self.broken = True
            return False

    def done(self):
        """Whether the client should stop writing."""
        return self.closed or self.broken or self.goaway is not None

    def drain(self, deadline):
        """Reads until the connection ends (or `deadline`)."""
        while not self.closed and time.monotonic() < deadline:
            self.pump(True)


def handshake(addr, settings=None, rcvbuf=None):
    """Connects, sends the preface and SETTINGS; returns the socket and a frame reader."""
    s = connect(addr, rcvbuf)
    frames = Frames(s)
    frames.send(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())
    return s, frames


def headers_block(host, path="/", method="GET", end_stream=True, stream=1, encoder=None):
    encoder = encoder or hpack.Encoder()
    block = encoder.encode(request_headers(host, path, method))
    flags = ["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
    return HeadersFrame(stream, block, flags=flags).serialize()


def cmd_streams(addr, host, n):
    s = connect(addr)
    conn = h2_client()
    conn.initiate_connection()
    for i in range(n):
        conn.send_headers(1 + 2 * i, request_headers(host, "/"), end_stream=True)
    s.sendall(conn.data_to_send())
    ok = refused = other = 0
    done = set()
    deadline = time.monotonic() + TIMEOUT
    while len(done) < n and time.monotonic() < deadline:
        data = s.recv(1 << 16)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers).get(":status")
                if status == "200":
                    ok += 1
                else:
                    other += 1
                done.add(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id not in done:
                if ev.error_code == 7:  # REFUSED_STREAM
                    refused += 1
                else:
                    other += 1
                done.add(ev.stream_id)
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                deadline = 0
        s.sendall(conn.data_to_send())
    out(ok=ok, refused=refused, other=other)


def wait_outcome(frames, stream):
    """Reads until `stream` has a status or a reset, or the connection ends."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if stream in frames.statuses:
            return f"status:{frames.statuses[stream]}"
        if stream in frames.resets:
            return f"reset:{frames.resets[stream]}"
        if frames.goaway:
            return f"goaway:{frames.goaway[0]}"
        if frames.closed:
            return "closed"
        frames.pump(True)
    return "timeout"


def cmd_big_headers(addr, host, size):
    s, frames = handshake(addr)
    encoder = hpack.Encoder()
    # Without Huffman coding (Python's encoder is slow at it), in frames of 16 KiB.
    block = encoder.encode(request_headers(host, "/", extra=[("x-big", "a" * size)]), huffman=False)
    chunks = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    last = len(chunks) - 1
    data = HeadersFrame(1, chunks[0], flags=["END_STREAM"] + (["END_HEADERS"] if last == 0 else [])).serialize()
    for i, chunk in enumerate(chunks[1:], 1):
        data += ContinuationFrame(1, chunk, flags=["END_HEADERS"] if i == last else []).serialize()
    frames.send(data)
    first = wait_outcome(frames, 1)
    second = "-"
    if first.startswith(("status", "reset")):
        frames.send(headers_block(host, "/", stream=3, encoder=encoder))
        second = wait_outcome(frames, 3)
    out(first=first, second=second)


def cmd_rapid_reset(addr, host, streams, seconds, batch):
    deadline = time.monotonic() + seconds
    sent = connections = lost = 0
    codes = {}
    while sent < streams and time.monotonic() < deadline:
        s, frames = handshake(addr)
        connections += 1
        encoder = hpack.Encoder()
        stream = 1
        while sent < streams and time.monotonic() < deadline and not frames.done():
            data = b""
            for _ in range(batch):
                block = encoder.encode(request_headers(host, "/"))
                data += HeadersFrame(stream, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
                data += struct.pack(">I", 4)[1:] + bytes([RST_STREAM, 0]) + struct.pack(">II", stream, 8)
                stream += 2
            if not frames.send(data):
                break
            sent += batch
            frames.pump(False)
        if frames.done():
            frames.drain(time.monotonic() + 5)
            lost += 1
            code = frames.goaway[0] if frames.goaway else "closed"
            codes[code] = codes.get(code, 0) + 1
        s.close()
    goaway = ",".join(f"{k}:{v}" for k, v in sorted(codes.items(), key=str)) or "-"
    out(connections=connections, lost=lost, streams=sent, goaway=goaway)


def cmd_reset_after_accept(addr, host, n, rounds, wait=TIMEOUT):
    s, frames = handshake(addr)
    encoder = hpack.Encoder()
    stream = 1

    def open_batch():
        nonlocal stream
        ids = list(range(stream, stream + 2 * n, 2))
        stream += 2 * n
        frames.send(b"".join(headers_block(host, "/", stream=i, encoder=encoder) for i in ids))
        return ids

    for r in range(rounds):
        ids = open_batch()
        frames.pump(False)
        print(f"opened round={r}", flush=True)
        sys.stdin.readline()  # the test has seen weir forward them
        frames.send(b"".join(struct.pack(">I", 4)[1:] + bytes([RST_STREAM, 0]) + struct.pack(">II", i, 8) for i in ids))
    last = open_batch()
    deadline = time.monotonic() + wait
    while sum(1 for i in last if i in frames.resets) < n and not frames.done() and time.monotonic() < deadline:
        frames.pump(True)
    refused = sum(1 for i in last if frames.resets.get(i) == 7)
    out(refused=refused, other=sum(1 for i in last if i in frames.resets) - refused, closed=frames.closed)


def cmd_continuation(addr, host, frames_max, size):
    s, frames = handshake(addr)
    # A literal field whose value announces 1 MiB: the decoder needs more with every frame.
    encoder = hpack.Encoder()
    block = encoder.encode(request_headers(host, "/"))
    block += b"\x00\x01x\x7f" + bytes([0x80 | 0x7F, 0xFF, 0x3F])  # value length 2^20 + 126
    frames.send(HeadersFrame(1, block, flags=["END_STREAM"]).serialize())
    payload = b"a" * size
    sent = 0
    deadline = time.monotonic() + TIMEOUT
    while sent < frames_max and time.monotonic() < deadline:
        if not frames.send(ContinuationFrame(1, payload).serialize()):
            break
        sent += 1
        if sent % 8 == 0:
            frames.pump(False)
            if frames.done():
                break
    # Wait for weir's verdict (a GOAWAY, then the close).
    frames.drain(deadline)
    code, debug = frames.goaway or ("-", "-")
    out(frames=sent, closed=frames.closed, goaway=code, debug=debug or "-")


def flood_frame(kind, i):
    if kind == "ping":
        return PingFrame(0, opaque_data=struct.pack(">Q", i)).serialize()
    if kind == "settings":
        return SettingsFrame(0, settings={SettingsFrame.ENABLE_PUSH: 0}).serialize()
    if kind == "priority":
        return PriorityFrame(1 + 2 * (i % 1000), depends_on=0, stream_weight=16).serialize()
    if kind == "window-update":
        return WindowUpdateFrame(0, window_increment=1).serialize()
    if kind == "empty-data":
        return DataFrame(1, b"").serialize()
    if kind == "rst":
        return RstStreamFrame(1, error_code=8).serialize()
    raise SystemExit(f"unknown flood kind {kind}")


def cmd_flood(addr, host, kind, count):
    s, frames = handshake(addr)
    if kind in ("empty-data", "rst"):
        # A request whose body never ends: the empty DATA frames (or the resets) are on its stream.
        frames.send(headers_block(host, "/", "POST", end_stream=False))
    sent = 0
    batch = 64
    deadline = time.monotonic() + TIMEOUT
    while sent < count and time.monotonic() < deadline and not frames.done():
        data = b"".join(flood_frame(kind, sent + i) for i in range(batch))
        if not frames.send(data):
            break
        sent += batch
        frames.pump(False)
    frames.drain(deadline)
    out(sent=sent, closed=frames.closed, goaway=frames.goaway[0] if frames.goaway else "-")


def cmd_busy(addr, host, requests, path):
    s = connect(addr)
    big = (1 << 31) - 1
    conn = h2_client()
    # Windows wide open from the start, kept open by hand: a WINDOW_UPDATE for the stream and
    # one for the connection after every DATA frame, the chattiest real clients' pattern.
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: big}
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(big - 65535)
    s.sendall(conn.data_to_send())
    next_stream, started, ok, failed, goaway, pings = 1, 0, 0, 0, "-", 0
    open_streams = set()
    deadline = time.monotonic() + 3 * TIMEOUT
    while (ok + failed < requests) and time.monotonic() < deadline:
        while len(open_streams) < 8 and started < requests:
            conn.send_headers(next_stream, request_headers(host, path), end_stream=True)
            open_streams.add(next_stream)
            next_stream += 2
            started += 1
        s.sendall(conn.data_to_send())
        data = s.recv(1 << 16)
        if not data:
            break
        raw = b""
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.DataReceived) and ev.flow_controlled_length:
                n = ev.flow_controlled_length
                raw += WindowUpdateFrame(ev.stream_id, window_increment=n).serialize()
                raw += WindowUpdateFrame(0, window_increment=n).serialize()
            elif isinstance(ev, h2.events.ResponseReceived):
                # A BDP-style ping per response.
                pings += 1
                conn.ping(struct.pack(">Q", pings))
                if dict(ev.headers).get(":status") != "200":
                    failed += 1
                    open_streams.discard(ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                if ev.stream_id in open_streams:
                    ok += 1
                    open_streams.discard(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                if ev.stream_id in open_streams:
                    failed += 1
                    open_streams.discard(ev.stream_id)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                goaway = int(ev.error_code)
                deadline = 0
        s.sendall(conn.data_to_send() + raw)
    out(ok=ok, failed=failed, goaway=goaway, pings=pings)


def cmd_zero_window(addr, host, path):
    s, frames = handshake(addr, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    frames.send(headers_block(host, path))
    deadline = time.monotonic() + TIMEOUT
    while 1 not in frames.resets and not frames.done() and time.monotonic() < deadline:
        frames.pump(True)
    out(status=frames.statuses.get(1, "-"), reset=frames.resets.get(1, "-"), data=frames.data.get(1, 0))


def cmd_idle(addr, host):
    s, frames = handshake(addr)
    frames.send(headers_block(host, "/"))
    status = wait_outcome(frames, 1)
    frames.drain(time.monotonic() + TIMEOUT)
    out(status=status, goaway=frames.goaway[0] if frames.goaway else "-", closed=frames.closed)


def cmd_never_read(addr, host, path):
    big = (1 << 31) - 1
    s, frames = handshake(addr, settings={SettingsFrame.INITIAL_WINDOW_SIZE: big}, rcvbuf=4096)
    frames.send(WindowUpdateFrame(0, window_increment=big - 65535).serialize())
    frames.send(headers_block(host, path))
    out(asked=1)
    sys.stdin.read()  # the test closes stdin once it has seen weir give up on this connection
    total, eof = 0, False
    s.settimeout(5.0)
    try:
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                eof = True
                break
            total += len(chunk)
    except ConnectionResetError:
        eof = True
    except socket.timeout:
        pass
    out(bytes=total, eof=eof)


def cmd_pause_read(addr, host, path, size):
    big = (1 << 31) - 1
    s, frames = handshake(addr, settings={SettingsFrame.INITIAL_WINDOW_SIZE: big})
    frames.send(WindowUpdateFrame(0, window_increment=big - 65535).serialize())
    frames.send(headers_block(host, path))
    out(asked=1)
    sys.stdin.readline()  # the test says when: once this client's socket memory is full
    deadline = time.monotonic() + TIMEOUT
    while frames.data.get(1, 0) < size and 1 not in frames.resets and time.monotonic() < deadline:
        if not frames.pump(True):
            break
    out(
        status=frames.statuses.get(1, 0),
        data=frames.data.get(1, 0),
        reset=frames.resets.get(1, "-"),
        goaway=frames.goaway[0] if frames.goaway else "-",
        closed=frames.closed,
    )


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "streams":
        cmd_streams(args[0], args[1], int(args[2]))
    elif cmd == "big-headers":
        cmd_big_headers(args[0], args[1], int(args[2]))
    elif cmd == "rapid-reset":
        cmd_rapid_reset(args[0], args[1], int(args[2]), float(args[3]), int(args[4]) if len(args) > 4 else 16)
    elif cmd == "reset-after-accept":
        cmd_reset_after_accept(args[0], args[1], int(args[2]), int(args[3]), *[float(a) for a in args[4:5]])
    elif cmd == "continuation":
        cmd_continuation(args[0], args[1], int(args[2]), int(args[3]))
    elif cmd == "flood":
        cmd_flood(args[0], args[1], args[2], int(args[3]))
    elif cmd == "busy":
        cmd_busy(args[0], args[1], int(args[2]), args[3])
    elif cmd == "zero-window":
        cmd_zero_window(args[0], args[1], args[2])
    elif cmd == "idle":
        cmd_idle(args[0], args[1])
    elif cmd == "never-read":
        cmd_never_read(args[0], args[1], args[2])
    elif cmd == "pause-read":
        cmd_pause_read(args[0], args[1], args[2], int(args[3]))
    else:
        raise SystemExit(f"unknown subcommand {cmd}")


if __name__ == "__main__":
    main()
