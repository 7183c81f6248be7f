#!/usr/bin/env python3
"""Origins for `cargo xtask bench-transparent` (server network namespace).

    origin.py --cert C --key K --ready FILE

HTTPS on 443 (asyncio; every request answered 200 with a small body; the
client's `Connection: close` is honoured, so each request is a new TCP and
TLS connection) and, on 2525, a protocol where the server speaks first: a
one-line banner as soon as the connection is accepted, then it waits for
the client's EOF. Never resolves a name.
"""

import argparse
import asyncio
import ssl

BODY = b'{"ok":true,"server":"nono-bench-origin"}\n'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\nConnection: close\r\n\r\n"
    + BODY
)


async def https(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(RESPONSE)
            await writer.drain()
            if b"connection: close" in head.lower():
                break
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        writer.close()


async def banner(reader, writer):
    try:
        writer.write(b"220 nono-bench-origin ready\r\n")
        await writer.drain()
        await reader.read()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ready", required=True)
    a = ap.parse_args()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(a.cert, a.key)
    s1 = await asyncio.start_server(https, "0.0.0.0", 443, ssl=tls, backlog=4096)
    s2 = await asyncio.start_server(banner, "0.0.0.0", 2525, backlog=4096)
    with open(a.ready, "w") as f:
        f.write("ready\n")
    async with s1, s2:
        await asyncio.gather(s1.serve_forever(), s2.serve_forever())


asyncio.run(main())
