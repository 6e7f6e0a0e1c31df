"""A small PNG reader (stdlib zlib + struct, no PIL) for the pixels of Chromium's screenshots:
8-bit greyscale, RGB or RGBA, not interlaced, which is what Chromium writes."""

from __future__ import annotations

import statistics
import struct
import zlib
from collections import Counter
from dataclasses import dataclass

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
"""Bytes per pixel of each 8-bit colour type: greyscale, RGB, greyscale+alpha, RGBA."""


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    channels: int
    rows: tuple[bytes, ...]
    """Unfiltered rows, ``width * channels`` bytes each."""

    def pixel(self, x: int, y: int) -> tuple[int, ...]:
        """The colour at (x, y) without its alpha channel (opaque screenshots only)."""
        start = x * self.channels
        colour = tuple(self.rows[y][start:start + self.channels])
        return colour[:3] if self.channels >= 3 else colour[:1]

    def pixels(self) -> list[tuple[int, ...]]:
        return [self.pixel(x, y) for y in range(self.height) for x in range(self.width)]


def read_png(data: bytes) -> Image:
    """Decode a PNG file's bytes; ValueError for anything this reader does not handle."""
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG file")
    header, compressed, position = b"", bytearray(), len(SIGNATURE)
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            compressed += body
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour not in CHANNELS or interlace:
        raise ValueError(f"unsupported PNG: bit depth {depth}, colour type {colour}, interlace {interlace}")
    channels = CHANNELS[colour]
    raw = zlib.decompress(bytes(compressed))
    return Image(width, height, channels, _unfilter(raw, width * channels, height, channels))


def _unfilter(raw: bytes, stride: int, height: int, bpp: int) -> tuple[bytes, ...]:
    rows: list[bytes] = []
    previous = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                corner = previous[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + _paeth(left, previous[i], corner)) & 0xFF
        elif kind != 0:
            raise ValueError(f"bad PNG filter type {kind} in row {y}")
        previous = bytes(line)
        rows.append(previous)
    return tuple(rows)


def _paeth(left: int, up: int, corner: int) -> int:
    estimate = left + up - corner
    to_left, to_up, to_corner = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
    if to_left <= to_up and to_left <= to_corner:
        return left
    return up if to_up <= to_corner else corner


def ink_fraction(image: Image) -> float:
    """The share of pixels that differ from the image's most common colour (its background):
    0.0 for a blank region, more the more is drawn in it."""
    counts = Counter(image.pixels())
    if not counts:
        return 0.0
    background = counts.most_common(1)[0][1]
    return 1.0 - background / (image.width * image.height)


def grey_levels(image: Image) -> tuple[float, float]:
    """Mean and standard deviation of the first channel (the grey level of a greyscale screenshot):
    a flat fill has a deviation near 0, a hatched or dotted one a large deviation."""
    values = [pixel[0] for pixel in image.pixels()]
    return statistics.fmean(values), statistics.pstdev(values)
