#!/usr/bin/env python3
"""Client side of the proxy tests; runs inside `nono-agent exec`.

Every subcommand prints one JSON document on stdout.

  urllib [--cafile F] URL...     fetch each URL with urllib (proxy from the
                                 environment, as any Python program would)
  raw CASES.json                 send raw bytes to the proxy (from HTTP_PROXY
                                 unless a case names another port); in "data",
                                 {AUTH} becomes this sandbox's
                                 Proxy-Authorization line, {AUTH:user:pw}
                                 one with those credentials and {SECRET}
                                 this sandbox's proxy secret
  tunnels N HOST PORT [LINGER]   N concurrent CONNECT tunnels to HOST:PORT (an
                                 echo server), all open at once, each echoing
                                 a few bytes; then wait LINGER seconds before
                                 exiting
  direct HOST PORT               a plain TCP connect, ignoring the proxy
  environ PID                    try to read /proc/PID/environ and find a proxy
                                 URL in it
  scan-environ                   read every /proc/*/environ this process can and
                                 list proxy URLs other than its own
"""

import asyncio
import base64
import json
import os
import re
import resource
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def proxy():
    u = urllib.parse.urlsplit(os.environ["HTTP_PROXY"])
    return u.hostname, u.port, u.username or "", u.password or ""


def auth_line(creds):
    return "Proxy-Authorization: Basic " + base64.b64encode(creds.encode()).decode() + "\r\n"


def cmd_urllib(args):
    cafile = None
    if args and args[0] == "--cafile":
        cafile = args[1]
        args = args[2:]
    ctx = ssl.create_default_context(cafile=cafile)
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx))
    out = []
    for url in args:
        r = {"url": url}
        try:
            with opener.open(url, timeout=20) as resp:
                r["status"] = resp.status
                r["body"] = resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            r["status"] = e.code
            r["body"] = e.read().decode("utf-8", "replace")
        except Exception as e:  # URLError (e.g. tunnel refused), TLS, ...
            r["error"] = repr(e)
        out.append(r)
    print(json.dumps(out))


def read_response(s, timeout):
    s.settimeout(timeout)
    buf = b""
    closed = False
    deadline = time.monotonic() + timeout
    try:
        while b"\r\n\r\n" not in buf:
            b = s.recv(65536)
            if not b:
                closed = True
                break
            buf += b
        head, _, body = buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if m and not closed:
            want = int(m.group(1))
            while len(body) < want and time.monotonic() < deadline:
                b = s.recv(65536)
                if not b:
                    closed = True
                    break
                body += b
        return head, body, closed
    except socket.timeout:
        head, _, body = buf.partition(b"\r\n\r\n")
        return head, body, closed


def cmd_raw(args):
    cases = json.load(open(args[0], encoding="utf-8"))
    host, port, user, pw = proxy()
    out = {}
    for c in cases:
        data = c["data"].replace("{SECRET}", pw)
        data = re.sub(
            r"\{AUTH(?::([^}]*))?\}",
            lambda m: auth_line(m.group(1) if m.group(1) is not None else f"{user}:{pw}"),
            data,
        )
        r = {}
        try:
            s = socket.create_connection((host, c.get("port", port)), timeout=10)
            s.sendall(data.encode("utf-8"))
            head, body, closed = read_response(s, c.get("timeout", 5))
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split(" ", 2)
            r["status_line"] = line
            r["status"] = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
            r["head"] = head.decode("latin-1")
            r["body"] = body.decode("utf-8", "replace")
            r["closed"] = closed
            s.close()
        except OSError as e:
            r["error"] = repr(e)
            r["status"] = None
        out[c["name"]] = r
    print(json.dumps(out))


async def one_tunnel(i, host, port, target, auth, established, go, timeout):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(
            (f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n").encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise RuntimeError(f"CONNECT answered {head[:80]!r}")
        established.append(i)
        await go.wait()
        msg = f"ping {i} {'x' * (i % 17)}\n".encode()
        writer.write(msg)
        await writer.drain()
        echoed = await asyncio.wait_for(reader.readexactly(len(msg)), timeout)
        if echoed != msg:
            raise RuntimeError(f"echo mismatch: {echoed!r} != {msg!r}")
        return len(msg)
    finally:
        writer.close()


async def tunnels(n, target_host, target_port):
    host, port, user, pw = proxy()
    auth = auth_line(f"{user}:{pw}")
    target = f"{target_host}:{target_port}"
    established = []
    go = asyncio.Event()
    tasks = [
        asyncio.create_task(one_tunnel(i, host, port, target, auth, established, go, 60))
        for i in range(n)
    ]
    # Release the echo phase only once every tunnel is open (or has failed):
    # all n tunnels exist at the same time.
    deadline = time.monotonic() + 90
    while len(established) + sum(t.done() for t in tasks) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    open_at_once = len(established)
    go.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [f"{i}: {r!r}" for i, r in enumerate(results) if isinstance(r, BaseException)]
    ok = sum(1 for r in results if not isinstance(r, BaseException))
    return {
        "ok": ok,
        "open_at_once": open_at_once,
        "bytes": sum(r for r in results if isinstance(r, int)),
        "failures": failures[:20],
        "failure_count": len(failures),
    }


def cmd_tunnels(args):
    n, host, port = int(args[0]), args[1], int(args[2])
    linger = float(args[3]) if len(args) > 3 else 0.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(tunnels(n, host, port))
    print(json.dumps(result), flush=True)
    time.sleep(linger)


def cmd_direct(args):
    host, port = args[0], int(args[1])
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.close()
        print(json.dumps({"connected": True}))
    except OSError as e:
        print(json.dumps({"connected": False, "errno": e.errno, "error": repr(e)}))


def cmd_environ(args):
    pid = args[0]
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError as e:
        print(json.dumps({"readable": False, "errno": e.errno, "error": repr(e)}))
        return
    url = next((v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"HTTP_PROXY=")), None)
    print(json.dumps({"readable": True, "http_proxy": url}))


def cmd_scan_environ(args):
    own = os.environ.get("HTTP_PROXY")
    found = {}
    readable = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        readable += 1
        for v in env:
            if v.startswith(b"HTTP_PROXY="):
                url = v.split(b"=", 1)[1].decode("utf-8", "replace")
                if url != own and url.startswith("http://nono:"):
                    found[d] = url
    print(json.dumps({"readable": readable, "foreign": found}))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "urllib": cmd_urllib,
        "raw": cmd_raw,
        "tunnels": cmd_tunnels,
        "direct": cmd_direct,
        "environ": cmd_environ,
        "scan-environ": cmd_scan_environ,
    }[cmd](args)


if __name__ == "__main__":
    main()
