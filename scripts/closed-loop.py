#!/usr/bin/env python3
"""A client that waits on every answer: ApiVersions v0 requests over one connection, one
in flight, the next sent when the answer is read (TCP_NODELAY). Prints requests/s, p50
and p99. It shows what read pacing (`read_pacing_us`) must never do: delay a client that
waits on its answers.

Usage: scripts/closed-loop.py PORT REQUESTS
"""
import socket
import struct
import sys
import time


def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client_id = b"closed-loop"

    def request(correlation_id):
        body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
        return struct.pack(">i", len(body)) + body

    def read_exact(k):
        got = b""
        while len(got) < k:
            chunk = s.recv(k - len(got))
            if not chunk:
                raise SystemExit("the broker closed the connection")
            got += chunk
        return got

    took = []
    started = time.perf_counter()
    for i in range(n):
        t = time.perf_counter_ns()
        s.sendall(request(i))
        (length,) = struct.unpack(">i", read_exact(4))
        read_exact(length)
        took.append(time.perf_counter_ns() - t)
    elapsed = time.perf_counter() - started
    took.sort()
    print("requests/s %.0f  p50 %.0f us  p99 %.0f us"
          % (n / elapsed, took[n // 2] / 1000, took[n * 99 // 100] / 1000))


if __name__ == "__main__":
    main()
