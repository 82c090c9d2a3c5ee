#!/usr/bin/env python3
"""A capturing TCP proxy for Kafka traffic: forwards every connection to the broker and
writes each request frame a client sends (4-byte length prefix included) to a file.

Usage: capture-frames.py LISTEN_PORT UPSTREAM_PORT OUT_DIR

Start the broker with BROKER_ADVERTISED_PORT=LISTEN_PORT so that clients reach it through
the proxy for every request, not only the bootstrap. Files are named
`k{api_key:02}-v{version}-{sha1[:12]}.bin`; identical frames are written once. Runs until
SIGTERM/SIGINT. scripts/capture-fuzz-seeds.sh drives real clients through it.
"""
import hashlib
import os
import signal
import socket
import struct
import sys
import threading

listen_port, upstream_port, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.makedirs(out_dir, exist_ok=True)
# A frame larger than this is forwarded but not kept (seeds stay small).
KEEP_FRAME_BYTES_MAX = 256 * 1024


def save(frame):
    if len(frame) < 8 or len(frame) > KEEP_FRAME_BYTES_MAX:
        return
    key, version = struct.unpack(">hh", frame[:4])
    digest = hashlib.sha1(frame).hexdigest()[:12]
    path = os.path.join(out_dir, f"k{key:02}-v{version}-{digest}.bin")
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(struct.pack(">i", len(frame)) + frame)


def pump(src, dst, capture):
    buf = b""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
            if capture:
                buf += data
                while len(buf) >= 4:
                    (n,) = struct.unpack(">i", buf[:4])
                    if n < 0 or len(buf) < 4 + n:
                        break
                    save(buf[4:4 + n])
                    buf = buf[4 + n:]
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(client):
    upstream = socket.create_connection(("127.0.0.1", upstream_port))
    threading.Thread(target=pump, args=(client, upstream, True), daemon=True).start()
    threading.Thread(target=pump, args=(upstream, client, False), daemon=True).start()


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen_port))
    listener.listen(64)
    print(f"capturing on 127.0.0.1:{listen_port} -> {upstream_port}", flush=True)
    while True:
        client, _ = listener.accept()
        serve(client)


if __name__ == "__main__":
    main()
