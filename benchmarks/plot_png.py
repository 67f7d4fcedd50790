"""A line plot as a PNG with no plotting library (the GPU image has none): axes from zero,
one coloured polyline per series, a light grid. Labels go in the caption the caller prints."""

from __future__ import annotations

import struct
import zlib

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _png(pixels, w, h) -> bytes:
    raw = b"".join(b"\x00" + bytes(v for px in pixels[y * w:(y + 1) * w] for v in px) for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def line_plot(path: str, series: dict, width: int = 640, height: int = 360, margin: int = 30) -> list[str]:
    """``series``: name -> list of y values (x = index). Writes ``path``; returns the legend
    lines ("name: colour (r, g, b)") for the caption."""
    px = [(255, 255, 255)] * (width * height)
    ys = [y for v in series.values() for y in v if y == y]
    n = max((len(v) for v in series.values()), default=1)
    top = max(ys, default=1.0) * 1.05 or 1.0

    def put(x, y, c):
        if 0 <= x < width and 0 <= y < height:
            px[y * width + x] = c

    def to_xy(i, y):
        return (margin + round(i * (width - 2 * margin) / max(n - 1, 1)),
                height - margin - round(y * (height - 2 * margin) / top))

    for k in range(1, 5):  # grid lines at quarters of the range
        gy = height - margin - round(k * (height - 2 * margin) / 4)
        for x in range(margin, width - margin):
            put(x, gy, (225, 225, 225))
    for x in range(margin, width - margin):
        put(x, height - margin, (0, 0, 0))
    for y in range(margin, height - margin + 1):
        put(margin, y, (0, 0, 0))
    legend = []
    for (name, vals), c in zip(series.items(), COLOURS):
        pts = [to_xy(i, y) for i, y in enumerate(vals) if y == y]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            steps = max(abs(x1 - x0), abs(y1 - y0), 1)
            for s in range(steps + 1):
                x, y = x0 + (x1 - x0) * s // steps, y0 + (y1 - y0) * s // steps
                for dx in (-1, 0, 1):
                    for dy in (-1, 0, 1):
                        put(x + dx, y + dy, c)
        for x, y in pts:
            for dx in range(-3, 4):
                for dy in range(-3, 4):
                    put(x + dx, y + dy, c)
        legend.append(f"{name}: colour {c}")
    with open(path, "wb") as f:
        f.write(_png(px, width, height))
    return legend + [f"y axis 0 .. {top:.4g} (grid at quarters), x = step 0 .. {n - 1}"]
