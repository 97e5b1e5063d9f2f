"""WebSocket server and client for weir's tests, on the `websockets` library.

`ws.py server`: an echo server on 127.0.0.1:0 (prints `port <n>`, serves until stdin closes);
a text message `close-please` makes the server close the connection (code 4001).

`ws.py client ADDR HOST N SIZE ORDER`: connects to ADDR (IP:PORT) asking for `ws://HOST/`, sends N binary
messages of SIZE random bytes and checks each echo, then closes: ORDER `client` closes from the
client, `server` asks the server to close first. Prints one JSON line with what happened.
"""

import json
import os
import sys
import threading


def server():
    from websockets.sync.server import serve

    def echo(ws):
        for msg in ws:
            if msg == "close-please":
                ws.close(4001, "asked to close")
                return
            ws.send(msg)

    srv = serve(echo, "127.0.0.1", 0, max_size=None, compression=None)
    print(f"port {srv.socket.getsockname()[1]}", flush=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    sys.stdin.read()
    srv.shutdown()


def client(addr, host, n, size, order):
    import socket

    from websockets.sync.client import connect
    from websockets.exceptions import ConnectionClosed

    ip, port = addr.rsplit(":", 1)
    sock = socket.create_connection((ip, int(port)), timeout=10)
    out = {"echoed": 0, "mismatch": 0}
    with connect(f"ws://{host}/", sock=sock, max_size=None, compression=None, open_timeout=10, close_timeout=10) as ws:
        for _ in range(n):
            data = os.urandom(size)
            ws.send(data)
            back = ws.recv(timeout=20)
            if back == data:
                out["echoed"] += 1
            else:
                out["mismatch"] += 1
        if order == "server":
            ws.send("close-please")
            try:
                ws.recv(timeout=10)
            except ConnectionClosed as e:
                out["close_code"] = e.rcvd.code if e.rcvd else None
        else:
            ws.close(1000, "done")
            out["close_code"] = ws.close_code
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server()
    else:
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
