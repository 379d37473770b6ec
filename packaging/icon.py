"""Draw the bundle icon (a blue tile with a river and a key) as a PNG, with the standard library only.

    python packaging/icon.py            # rewrites packaging/icon.png

The drawing is deterministic, so tests can check that the committed icon is the one this file makes.
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from pathlib import Path

SIZE = 512
ICON_PATH = Path(__file__).with_name("icon.png")

_Pixel = tuple[int, int, int, int]


def _rounded_tile_alpha(x: float, y: float, size: int, radius: float) -> float:
    """Coverage (0..1) of a rounded square at the pixel centre (x, y), with a 1-pixel soft edge."""
    cx = min(max(x, radius), size - radius)
    cy = min(max(y, radius), size - radius)
    distance = math.hypot(x - cx, y - cy)
    return max(0.0, min(1.0, radius - distance + 0.5))


def _blend(under: _Pixel, over: tuple[int, int, int], coverage: float) -> _Pixel:
    if coverage <= 0.0:
        return under
    r, g, b, a = under
    return (
        round(r + (over[0] - r) * coverage),
        round(g + (over[1] - g) * coverage),
        round(b + (over[2] - b) * coverage),
        a,
    )


def _pixel(x: int, y: int, size: int) -> _Pixel:
    px, py = x + 0.5, y + 0.5
    s = size / 128.0
    alpha = _rounded_tile_alpha(px, py, size, 24 * s)
    if alpha <= 0.0:
        return (0, 0, 0, 0)
    # Deep blue at the top to a lighter river blue at the bottom.
    t = py / size
    colour: _Pixel = (round(20 + 30 * t), round(60 + 70 * t), round(140 + 70 * t), round(255 * alpha))
    # Two waves: the river.
    for base, amplitude in ((84 * s, 6 * s), (102 * s, 5 * s)):
        wave_y = base + amplitude * math.sin(px / (14 * s))
        colour = _blend(colour, (235, 244, 255), max(0.0, min(1.0, 3.2 * s - abs(py - wave_y) + 0.5)))
    # A key: a ring and a shaft with two teeth, in gold.
    gold = (247, 196, 58)
    ring = abs(math.hypot(px - 46 * s, py - 44 * s) - 15 * s)
    colour = _blend(colour, gold, max(0.0, min(1.0, 5 * s - ring + 0.5)))
    in_shaft = 59 * s <= px <= 102 * s and abs(py - 44 * s) <= 4.5 * s
    in_teeth = (84 * s <= px <= 91 * s or 95 * s <= px <= 102 * s) and 44 * s <= py <= 58 * s
    if in_shaft or in_teeth:
        colour = _blend(colour, gold, 1.0)
    return colour


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bytes(size: int = SIZE) -> bytes:
    """The icon as PNG bytes (8-bit RGBA, no interlace)."""
    rows = bytearray()
    for y in range(size):
        rows.append(0)  # filter type: none
        for x in range(size):
            rows.extend(_pixel(x, y, size))
    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + _chunk(b"IEND", b"")
    )


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; ValueError when the bytes are not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def main() -> int:
    ICON_PATH.write_bytes(png_bytes())
    print(f"wrote {ICON_PATH} ({SIZE}x{SIZE})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
