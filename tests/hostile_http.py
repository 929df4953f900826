"""A hostile HTTP client, run as its own process: big bodies, sent as fast as the server takes them.

``python tests/hostile_http.py PORT API_KEY SECONDS`` runs five attacks on
five threads for SECONDS, each again and again (once refused or done, the
next after a short pause), and prints how many bytes it sent. It is its own process so that its sending costs the
server's process nothing: only the server's handling of it is measured.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Iterator

BODY = 100 * 1024 * 1024
#: Bodies costly to parse: many form fields, or one big well-formed file part.
FORM = b"a=b&" * 16384
FILE_HEAD = b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
FILE_TAIL = b"\r\n--xx--\r\n"
FILE = b"a" * 65536
#: An upload the server reads in full: under its default 10 MiB limit.
UPLOAD = 8 * 1024 * 1024
#: Seconds between one attack's end and the next.
PAUSE = 0.2


def body(multipart: bool, size: int = BODY) -> Iterator[bytes]:
    """Exactly ``size`` bytes, in chunks."""
    if not multipart:
        yield from (FORM for _ in range(size // len(FORM)))
        return
    yield FILE_HEAD
    left = size - len(FILE_HEAD) - len(FILE_TAIL)
    while left > 0:
        yield FILE[:left]
        left -= len(FILE)
    yield FILE_TAIL


def attack(port: int, head: bytes, chunked: bool, until: float, sent: list[int]) -> None:
    size = int(head.split(b"Content-Length: ")[1].split(b"\r")[0]) if b"Content-Length: " in head else BODY
    while time.monotonic() < until:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(head)
                for chunk in body(b"multipart" in head, size):
                    if time.monotonic() > until:
                        break
                    s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    sent[0] += len(chunk)
                if chunked:
                    s.sendall(b"0\r\n\r\n")
                s.recv(1)
        except OSError:
            pass  # refused and closed: the point
        time.sleep(PAUSE)  # then again: a body in flight, not a flood of connections


def main() -> None:
    port, key, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    host = f"Host: 127.0.0.1:{port}\r\n"
    multipart = "Content-Type: multipart/form-data; boundary=xx\r\n"
    heads = [
        # Unauthenticated multipart upload.
        (f"POST /api/v1/file?username=a HTTP/1.1\r\n{host}{multipart}Content-Length: {BODY}\r\n\r\n", False),
        # A form body to a route that takes none.
        (f"POST /healthz HTTP/1.1\r\n{host}Content-Type: application/x-www-form-urlencoded\r\n"
         f"Content-Length: {BODY}\r\n\r\n", False),
        # A valid key, a body with no length announced.
        (f"POST /api/v1/file?username=a HTTP/1.1\r\n{host}X-API-Key: {key}\r\n{multipart}"
         "Transfer-Encoding: chunked\r\n\r\n", True),
        # A valid key, a length past the limit.
        (f"POST /api/v1/chat HTTP/1.1\r\n{host}X-API-Key: {key}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
         f"Content-Length: {BODY}\r\n\r\n", False),
        # A valid key and an upload within the limit: read, and parsed (then refused: not a PNG).
        (f"POST /api/v1/file?username=a HTTP/1.1\r\n{host}X-API-Key: {key}\r\n{multipart}"
         f"Content-Length: {UPLOAD}\r\n\r\n", False),
    ]
    until = time.monotonic() + seconds
    sent = [0]
    threads = [threading.Thread(target=attack, args=(port, h.encode(), c, until, sent)) for h, c in heads]
    print("started", flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"sent {sent[0]}", flush=True)


if __name__ == "__main__":
    main()
