#!/usr/bin/env python3
"""The daemon's peers for tests/openapi/check.sh, with nothing external:

- an HTTPS receiver (the certificate and key check.sh made with its private CA) that
  answers 200 to everything, except 400 to a request naming the device "dead-1", so that
  its events become dead letters (GET .../dead-letters then has entries to show);
- a minimal MQTT 3.1.1 broker stub (CONNACK, SUBACK granting QoS 1, PINGRESP) that
  publishes a few QoS 0 messages after each SUBSCRIBE (one of them not JSON), so the
  source is connected and subscribed and events flow.

Writes "RECEIVER_PORT MQTT_PORT" to the file given as the last argument once both listen.
Usage: peers.py CERT KEY PORTS_FILE
"""

import http.server
import os
import socket
import ssl
import sys
import threading

MESSAGES = [
    ("openapi/room-1/status", b'{"people": 3}'),
    ("openapi/room-2/status", b'{"people": 1}'),
    ("openapi/dead-1/status", b'{"people": 2}'),
    ("openapi/room-3/status", b"not json"),
]


class Receiver(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if b'"dead-1"' in body:
            status, answer = 400, b'{"error":"device dead-1 is refused"}'
        else:
            status, answer = 200, b'{"ok":true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def read_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def remaining_length(conn):
    value, shift = 0, 0
    while True:
        b = read_exact(conn, 1)[0]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value
        shift += 7


def encode_length(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def publish(topic, payload):
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + payload
    return bytes([0x30]) + encode_length(len(body)) + body


def mqtt_client(conn):
    try:
        while True:
            header = read_exact(conn, 1)[0]
            body = read_exact(conn, remaining_length(conn))
            kind = header >> 4
            if kind == 1:  # CONNECT
                conn.sendall(b"\x20\x02\x00\x00")
            elif kind == 8:  # SUBSCRIBE: packet id, then (filter, qos) pairs
                pid, rest, granted = body[:2], body[2:], b""
                while rest:
                    n = int.from_bytes(rest[:2], "big")
                    rest = rest[2 + n + 1:]
                    granted += b"\x01"
                conn.sendall(bytes([0x90]) + encode_length(2 + len(granted)) + pid + granted)
                for topic, payload in MESSAGES:
                    conn.sendall(publish(topic, payload))
            elif kind == 12:  # PINGREQ
                conn.sendall(b"\xd0\x00")
            elif kind == 14:  # DISCONNECT
                return
    except (ConnectionError, OSError):
        pass
    finally:
        conn.close()


def mqtt_serve(listener):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=mqtt_client, args=(conn,), daemon=True).start()


def main():
    cert, key, ports_file = sys.argv[1:4]
    https = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    https.socket = ctx.wrap_socket(https.socket, server_side=True, do_handshake_on_connect=False)
    mqtt = socket.socket()
    mqtt.bind(("127.0.0.1", 0))
    mqtt.listen(16)
    threading.Thread(target=mqtt_serve, args=(mqtt,), daemon=True).start()
    tmp = ports_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{https.server_address[1]} {mqtt.getsockname()[1]}\n")
    os.replace(tmp, ports_file)
    https.serve_forever()


if __name__ == "__main__":
    main()
