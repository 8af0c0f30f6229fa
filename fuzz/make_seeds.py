#!/usr/bin/env python3
"""Makes the fuzz targets' seed corpora (fuzz/seeds/<target>/) from a real recording.

Usage: make_seeds.py RECORDING [COMM ...]

RECORDING is a file written by `traceid record` while real clients talked to a real server
(the committed seeds come from curl and a Python client against nginx on 127.0.0.1, with
every trace-context format, a POST body, a chunked response, keep-alive and a request
written in pieces). Only records of processes named COMM (default: nginx curl python3) are
used. Each target gets its input format (see fuzz/src/lib.rs):
  recording_reader  the recording cut down to those records;
  event_decode      one file per distinct (kind, source) record;
  pipeline          the records, each u16-length-prefixed;
  http1_split       per connection, its data in frames (control byte + up to 63 bytes);
  tracectx          the header lines of each request head, as "\\xff" + "name:value" lines.
"""
import hashlib
import os
import struct
import sys

HEADER = 32  # EventHeader: kind u16, pad u16, pid u32, tid u32, fd i32, ts u64, conn_ts u64... comm
DATA = 1


def records(path):
    with open(path, "rb") as f:
        head = f.read(24)
        assert head[:8] == b"TRACEID\0", "not a traceid recording"
        while True:
            n = f.read(4)
            if len(n) < 4:
                return head
            (length,) = struct.unpack("<I", n)
            yield f.read(length)


def header(rec):
    kind, _, pid, _, fd, _, conn_ts = struct.unpack_from("<HHIIiQQ", rec)
    comm = rec[32:48].split(b"\0")[0].decode(errors="replace")
    return kind, pid, fd, conn_ts, comm


def write(target, data):
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frames(from_client, data):
    out = bytearray()
    for i in range(0, len(data), 63):
        piece = data[i:i + 63]
        out.append((0x80 if from_client else 0) | len(piece))
        out += piece
    return bytes(out)


def main():
    path, comms = sys.argv[1], set(sys.argv[2:] or ["nginx", "curl", "python3"])
    with open(path, "rb") as f:
        file_header = f.read(24)
    kept = [r for r in records(path) if len(r) >= 48 and header(r)[4] in comms]
    write("recording_reader", file_header + b"".join(struct.pack("<I", len(r)) + r for r in kept))
    seen = set()
    for r in kept:
        kind = header(r)[0]
        key = (kind, r[49] if kind == DATA and len(r) > 49 else None)
        if key not in seen:
            seen.add(key)
            write("event_decode", r)
    write("pipeline", b"".join(struct.pack("<H", len(r)) + r for r in kept if len(r) < 65536))
    streams = {}
    for r in kept:
        kind, pid, fd, conn_ts, _ = header(r)
        if kind != DATA:
            continue
        direction, _source, role = r[48], r[49], r[50]
        (captured,) = struct.unpack_from("<I", r, 52)
        payload = r[64:64 + captured]
        # The client's writes and the server's reads flow client to server.
        from_client = (role == 2) == (direction == 1)
        streams.setdefault((pid, fd, conn_ts), bytearray()).extend(frames(from_client, payload))
        if payload.split(b"\r\n", 1)[0].endswith(b"HTTP/1.1") and direction == 1 and role == 2:
            lines = payload.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
            write("tracectx", b"\n".join(b"\xff" + l.replace(b": ", b":", 1) for l in lines))
    for data in streams.values():
        write("http1_split", bytes(data))


if __name__ == "__main__":
    main()
