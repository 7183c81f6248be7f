#!/usr/bin/env python3
"""A tiny authoritative-only DNS server for the proxy tests (UDP).

    dns.py --listen 127.0.0.1:5353 --log FILE --ready FILE NAME=ADDR...

Answers A/AAAA queries for the names in its table (NOERROR with no answer
for the other family), NXDOMAIN for every other name, and logs every query
as a JSON line {"name", "type"} so a test can prove a name was never asked.
Never forwards anything anywhere.
"""

import argparse
import ipaddress
import json
import socket
import struct


def parse_question(data):
    (qid, flags, qd, _an, _ns, _ar) = struct.unpack("!HHHHHH", data[:12])
    pos = 12
    labels = []
    while True:
        n = data[pos]
        pos += 1
        if n == 0:
            break
        labels.append(data[pos : pos + n].decode("ascii", "replace"))
        pos += n
    qtype, qclass = struct.unpack("!HH", data[pos : pos + 4])
    pos += 4
    return qid, flags, ".".join(labels), qtype, qclass, data[12:pos]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--ready", required=True)
    ap.add_argument("table", nargs="*")
    a = ap.parse_args()
    table = {}
    for entry in a.table:
        name, addrs = entry.split("=", 1)
        table[name.lower().rstrip(".")] = [ipaddress.ip_address(x) for x in addrs.split(",")]
    host, port = a.listen.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, int(port)))
    log = open(a.log, "a", encoding="utf-8")
    with open(a.ready, "w") as f:
        f.write("ready\n")
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            qid, flags, name, qtype, qclass, question = parse_question(data)
        except (IndexError, struct.error):
            continue
        log.write(json.dumps({"name": name, "type": qtype}) + "\n")
        log.flush()
        key = name.lower().rstrip(".")
        answers = []
        rcode = 0
        if key in table:
            for ip in table[key]:
                if qtype == 1 and ip.version == 4:
                    answers.append(struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + ip.packed)
                elif qtype == 28 and ip.version == 6:
                    answers.append(struct.pack("!HHHIH", 0xC00C, 28, 1, 60, 16) + ip.packed)
        else:
            rcode = 3
        rflags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
        resp = struct.pack("!HHHHHH", qid, rflags, 1, len(answers), 0, 0) + question
        sock.sendto(resp + b"".join(answers), peer)


if __name__ == "__main__":
    main()
