#!/usr/bin/env python3
"""Client side of the transparent-mode tests; runs inside `nono-agent exec
--transparent` and ignores every proxy variable (they are removed first): it
resolves through the system resolver or a resolver address it names itself,
and connects directly, as a Go binary, ssh or a gRPC client would.

Every subcommand prints one JSON document on stdout; errors are reported in
it (never as a traceback), so the test sees what the client saw.

  tls HOST PORT PATH [FAMILY]     getaddrinfo(HOST) (FAMILY 4, 6 or any), TCP,
                                  TLS (CA from SSL_CERT_FILE, SNI = HOST), GET
  echo HOST PORT DATA             getaddrinfo(HOST), TCP, send DATA first (a
                                  protocol where the client speaks first and
                                  that is neither TLS nor HTTP), read it back
  sni ADDR PORT SNI PATH          TCP to the literal ADDR (@NAME: NAME's
                                  first IPv4 address), TLS with SNI (empty:
                                  no SNI at all), GET with Host = SNI or ADDR
  http ADDR PORT HOST PATH        plain HTTP to the literal ADDR with that Host
  http-pipe ADDR PORT HOST1 HOST2 PATH
                                  two pipelined HTTP requests on one
                                  connection: PATH-1 with Host HOST1, then
                                  PATH-2 with Host HOST2
  sni-late ADDR PORT SNI PATH      as sni, but silent for 6 s after connecting
                                  (longer than the proxy's name peek)
  sni-split ADDR PORT SNI PATH     as sni, the ClientHello split over two TLS
                                  records (legal, RFC 8446 5.1)
  dns SERVER PORT NAME TYPE PROTO a DNS query (TYPE: A, AAAA, TXT; PROTO: udp,
                                  udp-connected or tcp) to SERVER:PORT; reports
                                  the rcode, the addresses answered and where
                                  the reply came from (recvfrom / getpeername)
  resolve NAME                    getaddrinfo(NAME) only
  listeners HOST PATH             talk to every loopback listener directly
                                  (HTTP with Host = HOST, TLS with SNI = HOST)
  loopback ADDR                   a listener and a client on ADDR (127.0.0.1, ::1)
"""

import json
import os
import random
import socket
import ssl
import struct
import sys

for k in list(os.environ):
    if k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        del os.environ[k]

TIMEOUT = 10


def family(f):
    return {"4": socket.AF_INET, "6": socket.AF_INET6}.get(f, socket.AF_UNSPEC)


def read_all(s):
    buf = b""
    while True:
        try:
            b = s.recv(65536)
        except (socket.timeout, ssl.SSLError, OSError):
            break
        if not b:
            break
        buf += b
    return buf


def http_exchange(s, host, path):
    s.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )
    data = read_all(s)
    head, _, body = data.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, body.decode("utf-8", "replace")


def connect(host, port, fam=socket.AF_UNSPEC):
    """getaddrinfo + connect, as any program does; returns (socket, info)."""
    infos = socket.getaddrinfo(host, port, fam, socket.SOCK_STREAM)
    addrs = [i[4][0] for i in infos]
    last = None
    for af, st, proto, _, sa in infos:
        s = socket.socket(af, st, proto)
        s.settimeout(TIMEOUT)
        try:
            s.connect(sa)
            return s, {"addrs": addrs, "dialled": sa[0], "peer": s.getpeername()[0]}
        except OSError as e:
            last = e
            s.close()
    raise OSError(f"no address connected ({addrs}): {last!r}")


def cmd_tls(host, port, path, fam="any"):
    r = {}
    try:
        s, info = connect(host, int(port), family(fam))
        r.update(info)
        ctx = ssl.create_default_context()
        t = ctx.wrap_socket(s, server_hostname=host)
        r["status"], r["body"] = http_exchange(t, host, path)
    except Exception as e:
        r["error"] = repr(e)
    return r


def cmd_echo(host, port, data):
    r = {}
    try:
        s, info = connect(host, int(port))
        r.update(info)
        s.sendall(data.encode())
        s.shutdown(socket.SHUT_WR)
        r["echoed"] = read_all(s).decode("utf-8", "replace")
    except Exception as e:
        r["error"] = repr(e)
    return r


def literal(addr, port):
    if addr.startswith("@"):
        # "@NAME": the first IPv4 address getaddrinfo gives for NAME (in a
        # transparent sandbox, its synthetic address).
        addr = socket.getaddrinfo(addr[1:], int(port), socket.AF_INET)[0][4][0]
    af = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(af, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect((addr, int(port)))
    return s


def cmd_sni(addr, port, sni, path):
    r = {}
    try:
        s = literal(addr, port)
        r["connected"] = True
        r["peer"] = s.getpeername()[0]
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        t = ctx.wrap_socket(s, server_hostname=sni or None)
        r["status"], r["body"] = http_exchange(t, sni or addr, path)
    except Exception as e:
        r["error"] = repr(e)
    return r


def cmd_sni_late(addr, port, sni, path):
    r = {}
    try:
        s = literal(addr, port)
        r["connected"] = True
        import time
        time.sleep(6)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        t = ctx.wrap_socket(s, server_hostname=sni or None)
        r["status"], r["body"] = http_exchange(t, sni or addr, path)
    except Exception as e:
        r["error"] = repr(e)
    return r


def split_first_record(data, at=40):
    """One TLS record -> two records carrying the same handshake bytes."""
    typ, ver, body = data[0:1], data[1:3], data[5:]
    n = struct.unpack("!H", data[3:5])[0]
    rec, rest = body[:n], body[n:]
    a, b = rec[:at], rec[at:]
    return (typ + ver + struct.pack("!H", len(a)) + a
            + typ + ver + struct.pack("!H", len(b)) + b + rest)


def cmd_sni_split(addr, port, sni, path):
    r = {}
    try:
        s = literal(addr, port)
        r["connected"] = True
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        t = ctx.wrap_bio(inc, out, server_hostname=sni or None)
        first = True
        while True:
            try:
                t.do_handshake()
                s.sendall(out.read())
                break
            except ssl.SSLWantReadError:
                data = out.read()
                if first and data:
                    data = split_first_record(data)
                    first = False
                if data:
                    s.sendall(data)
                b = s.recv(65536)
                if not b:
                    raise OSError("closed during the handshake")
                inc.write(b)
        req = f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n"
        t.write(req.encode())
        s.sendall(out.read())
        resp = b""
        while True:
            try:
                chunk = t.read(65536)
                if not chunk:
                    break
                resp += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            b = s.recv(65536)
            if not b:
                break
            inc.write(b)
        line = resp.split(b"\r\n", 1)[0].decode("latin-1").split()
        r["status"] = int(line[1]) if len(line) > 1 and line[1].isdigit() else 0
        r["body"] = resp.partition(b"\r\n\r\n")[2].decode("utf-8", "replace")
    except Exception as e:
        r["error"] = repr(e)
    return r


def cmd_http(addr, port, host, path):
    r = {}
    try:
        s = literal(addr, port)
        r["connected"] = True
        r["peer"] = s.getpeername()[0]
        r["status"], r["body"] = http_exchange(s, host, path)
    except Exception as e:
        r["error"] = repr(e)
    return r


def cmd_http_pipe(addr, port, host1, host2, path):
    r = {}
    try:
        s = literal(addr, port)
        r["connected"] = True
        s.sendall(
            f"GET {path}-1 HTTP/1.1\r\nHost: {host1}\r\n\r\n"
            f"GET {path}-2 HTTP/1.1\r\nHost: {host2}\r\nConnection: close\r\n\r\n".encode()
        )
        data = read_all(s)
        import re
        r["statuses"] = [int(c) for c in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]
    except Exception as e:
        r["error"] = repr(e)
    return r


TYPES = {"A": 1, "AAAA": 28, "TXT": 16}


def query(name, qtype):
    qid = random.randrange(65536)
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", TYPES[qtype], 1)
    return qid, q


def skip_name(m, pos):
    while True:
        n = m[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + n


def parse(m, qid):
    rid, flags, qd, an, _, _ = struct.unpack("!HHHHHH", m[:12])
    pos = 12
    for _ in range(qd):
        pos = skip_name(m, pos) + 4
    addrs = []
    for _ in range(an):
        pos = skip_name(m, pos)
        rtype, _, _, rdlen = struct.unpack("!HHIH", m[pos : pos + 10])
        pos += 10
        rdata = m[pos : pos + rdlen]
        pos += rdlen
        if rtype == 1:
            addrs.append(socket.inet_ntop(socket.AF_INET, rdata))
        elif rtype == 28:
            addrs.append(socket.inet_ntop(socket.AF_INET6, rdata))
    return {"id_ok": rid == qid, "rcode": flags & 0xF, "answers": addrs}


def cmd_dns(server, port, name, qtype, proto):
    r = {}
    af = socket.AF_INET6 if ":" in server else socket.AF_INET
    dest = (server, int(port))
    qid, q = query(name, qtype)
    try:
        if proto == "tcp":
            s = socket.socket(af, socket.SOCK_STREAM)
            s.settimeout(TIMEOUT)
            s.connect(dest)
            r["peer"] = list(s.getpeername()[:2])
            s.sendall(struct.pack("!H", len(q)) + q)
            n = b""
            while len(n) < 2:
                b = s.recv(2 - len(n))
                if not b:
                    raise OSError("closed before the length")
                n += b
            (length,) = struct.unpack("!H", n)
            m = b""
            while len(m) < length:
                b = s.recv(length - len(m))
                if not b:
                    raise OSError("closed mid-answer")
                m += b
        else:
            s = socket.socket(af, socket.SOCK_DGRAM)
            s.settimeout(TIMEOUT)
            if proto == "udp-connected":
                s.connect(dest)
                r["peer"] = list(s.getpeername()[:2])
                s.send(q)
            else:
                s.sendto(q, dest)
            m, src = s.recvfrom(4096)
            r["source"] = list(src[:2])
        r.update(parse(m, qid))
    except Exception as e:
        r["error"] = repr(e)
    return r


def cmd_loopback(host):
    """A server and a client inside the sandbox, on loopback."""
    r = {}
    try:
        af = socket.AF_INET6 if ":" in host else socket.AF_INET
        srv = socket.socket(af, socket.SOCK_STREAM)
        srv.bind((host, 0))
        srv.listen(1)
        c = socket.socket(af, socket.SOCK_STREAM)
        c.settimeout(TIMEOUT)
        c.connect(srv.getsockname()[:2])
        a, _ = srv.accept()
        c.sendall(b"ping")
        r["got"] = a.recv(16).decode()
        r["peer"] = c.getpeername()[0]
    except Exception as e:
        r["error"] = repr(e)
    return r


def loopback_listeners():
    """(address, port) of every TCP socket listening on loopback, as any
    process can read them from /proc/net/tcp{,6}."""
    found = []
    for path, af in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = open(path).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A":
                continue
            hexaddr, hexport = f[1].split(":")
            raw = bytes.fromhex(hexaddr)
            if af == socket.AF_INET:
                addr = socket.inet_ntop(af, raw[::-1])
            else:
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                addr = socket.inet_ntop(af, raw)
            if addr in ("127.0.0.1", "::1"):
                found.append((addr, int(hexport, 16)))
    return found


def cmd_listeners(host, path):
    """Talks to every loopback listener directly: plain HTTP with Host =
    HOST, and TLS with SNI = HOST, then a request for PATH."""
    r = {"listeners": [], "results": []}
    for addr, port in loopback_listeners():
        r["listeners"].append([addr, port])
        for how in ("http", "tls"):
            one = {"addr": addr, "port": port, "how": how}
            try:
                s = literal(addr, port)
                # The resolver's TCP side waits for a whole DNS message.
                s.settimeout(2)
                if how == "tls":
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    s = ctx.wrap_socket(s, server_hostname=host)
                one["status"], one["body"] = http_exchange(s, host, path)
            except Exception as e:
                one["error"] = repr(e)
            r["results"].append(one)
    return r


def cmd_resolve(name):
    try:
        infos = socket.getaddrinfo(name, 443, socket.AF_UNSPEC, socket.SOCK_STREAM)
        return {"addrs": sorted({i[4][0] for i in infos})}
    except Exception as e:
        return {"error": repr(e)}


def main():
    cmds = {
        "tls": cmd_tls,
        "echo": cmd_echo,
        "sni": cmd_sni,
        "sni-late": cmd_sni_late,
        "sni-split": cmd_sni_split,
        "http": cmd_http,
        "http-pipe": cmd_http_pipe,
        "dns": cmd_dns,
        "resolve": cmd_resolve,
        "loopback": cmd_loopback,
        "listeners": cmd_listeners,
    }
    print(json.dumps(cmds[sys.argv[1]](*sys.argv[2:])))


if __name__ == "__main__":
    main()
