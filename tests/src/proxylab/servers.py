#!/usr/bin/env python3
"""Test servers for the proxy tests; runs inside the server network namespace.

Listens dual-stack ([::], IPV6_V6ONLY=0, so 198.51.100.2, 203.0.113.2 and
2001:db8:100::2 all reach it):

* HTTP on 80 and 8080, HTTPS (test CA) on 443 and 8443: every request is
  answered 200 with a JSON body naming the port, Host, SNI and path, and is
  logged as one JSON line (the server-side truth the tests check). Paths under
  /repo.git/ are served by `git http-backend` (smart HTTP).
* A TCP echo server on 7000 (asyncio, for many concurrent tunnels), and on
  7001 one that, after the client's EOF, keeps the connection open for 30 s
  (a tunnel still open when the sandboxed command exits).

Never resolves a name. Writes the word "ready" to --ready once everything is
listening.
"""

import argparse
import asyncio
import json
import os
import resource
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG_LOCK = threading.Lock()
LOG = None


def log(rec):
    line = json.dumps(rec, sort_keys=True) + "\n"
    with LOG_LOCK:
        LOG.write(line)
        LOG.flush()


def read_chunked(rfile):
    body = b""
    while True:
        line = rfile.readline(65537)
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            # trailers
            while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass
            return body
        body += rfile.read(size)
        rfile.readline(3)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nono-test-server"
    sys_version = ""

    def log_message(self, *args):
        pass

    def handle_any(self):
        te = self.headers.get("Transfer-Encoding", "")
        length = self.headers.get("Content-Length")
        if "chunked" in te.lower():
            body = read_chunked(self.rfile)
        elif length:
            body = self.rfile.read(int(length))
        else:
            body = b""
        port = self.connection.getsockname()[1]
        tls = port in (443, 8443)
        rec = {
            "kind": "request",
            "port": port,
            "tls": tls,
            "sni": getattr(self.connection, "nono_sni", None),
            "method": self.command,
            "target": self.path,
            "host": self.headers.get("Host"),
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_len": len(body),
            "peer": self.client_address[0],
        }
        log(rec)
        if self.path.startswith("/repo.git/"):
            return self.git(body)
        payload = json.dumps(
            {
                "server": "nono-test-server",
                "port": port,
                "tls": tls,
                "host": rec["host"],
                "sni": rec["sni"],
                "path": self.path,
            }
        ).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = handle_any

    def git(self, body):
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.server.git_root,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": self.server.git_root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
        }
        for k, v in self.headers.items():
            env["HTTP_" + k.upper().replace("-", "_")] = v
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        p = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True
        )
        out = p.stdout
        sep = out.find(b"\r\n\r\n")
        if sep >= 0:
            head, payload = out[:sep], out[sep + 4 :]
        else:
            sep = out.find(b"\n\n")
            head, payload = (out[:sep], out[sep + 2 :]) if sep >= 0 else (b"", out)
        status = 200
        headers = []
        for line in head.decode("latin-1").splitlines():
            if ":" not in line:
                continue
            k, v = line.split(":", 1)
            if k.strip().lower() == "status":
                status = int(v.strip().split()[0])
            else:
                headers.append((k.strip(), v.strip()))
        if p.returncode != 0 and not out:
            status = 500
            payload = p.stderr
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # Not HTTPServer.server_bind: it calls getfqdn(), a DNS lookup.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "nono-test-server"
        self.server_port = self.server_address[1]


class TLSServer(DualStackServer):
    def finish_request(self, request, client_address):
        request.settimeout(20)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as e:
            log({"kind": "tls-error", "port": self.server_port, "error": str(e)})
            return
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            try:
                conn.close()
            except OSError:
                pass


async def echo(reader, writer, hold=0):
    port = writer.get_extra_info("sockname")[1]
    log({"kind": "echo", "port": port, "peer": writer.get_extra_info("peername")[0]})
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if hold:
            await asyncio.sleep(hold)
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def echo_hold(reader, writer):
    await echo(reader, writer, hold=30)


def listen6(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(4096)
    s.setblocking(False)
    return s


def echo_thread(ready):
    s, h = listen6(7000), listen6(7001)

    async def main():
        srv = await asyncio.start_server(echo, sock=s)
        srv2 = await asyncio.start_server(echo_hold, sock=h)
        ready.set()
        async with srv, srv2:
            await asyncio.gather(srv.serve_forever(), srv2.serve_forever())

    asyncio.run(main())


def main():
    global LOG
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--git-root", required=True)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    LOG = open(a.log, "a", encoding="utf-8")

    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(a.cert, a.key)

    def sni(sock, name, ctx):
        sock.nono_sni = name

    tls.sni_callback = sni

    servers = []
    for port in (80, 8080):
        servers.append(DualStackServer(("::", port), Handler))
    for port in (443, 8443):
        s = TLSServer(("::", port), Handler)
        s.tls = tls
        servers.append(s)
    for s in servers:
        s.git_root = a.git_root
        threading.Thread(target=s.serve_forever, daemon=True).start()
    ready = threading.Event()
    threading.Thread(target=echo_thread, args=(ready,), daemon=True).start()
    if not ready.wait(10):
        sys.exit("echo server did not start")
    with open(a.ready, "w") as f:
        f.write("ready\n")
    threading.Event().wait()


if __name__ == "__main__":
    main()
