#!/usr/bin/env python3
"""Compare two 8-bit RGB / RGBA / grey PNG images pixel by pixel, with the standard library only
(the GPU machine has no PIL): prints how many bytes differ and by at most how much, and exits with
1 if the largest difference exceeds LIMIT (0–255) or the sizes differ.

    python3 scripts/gpu/compare_png.py got.png want.png 2
"""

import struct
import sys
import zlib

CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def read_png(path):
    """(width, height, bytes of the unfiltered rows) of an 8-bit, non-interlaced PNG."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        sys.exit(f"{path}: not a PNG file")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    if header is None:
        sys.exit(f"{path}: no IHDR chunk")
    width, height, depth, color, _, _, interlace = header
    if depth != 8 or interlace != 0 or color not in CHANNELS:
        sys.exit(f"{path}: only 8-bit non-interlaced grey / RGB / RGBA PNGs are read here")
    bpp = CHANNELS[color]
    stride = width * bpp
    raw = zlib.decompress(idat)
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        kind, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                row[i] = (row[i] + a) & 255
            elif kind == 2:
                row[i] = (row[i] + b) & 255
            elif kind == 3:
                row[i] = (row[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += row
        prev = row
    return width, height, bytes(out)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    got, want, limit = read_png(sys.argv[1]), read_png(sys.argv[2]), int(sys.argv[3])
    if got[:2] != want[:2] or len(got[2]) != len(want[2]):
        sys.exit(f"sizes differ: {got[:2]} vs {want[:2]}")
    diffs = [abs(a - b) for a, b in zip(got[2], want[2])]
    worst, differing = max(diffs), sum(d > 0 for d in diffs)
    ok = worst <= limit
    print(f"{'ok' if ok else 'FAIL'}: {differing} of {len(diffs)} bytes differ, by at most {worst} (limit {limit})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
