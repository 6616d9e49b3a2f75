"""A PNG bar chart of the benchmark, drawn without any plotting library.

An RGB canvas, filled rectangles and a 5x7 bitmap font are all a labelled horizontal bar
chart needs; the PNG file itself is a zlib stream of scanlines in three chunks. This keeps the
benchmark free of matplotlib/Pillow.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

Color = tuple[int, int, int]

WHITE: Color = (255, 255, 255)
BLACK: Color = (30, 30, 30)
GREY: Color = (200, 200, 200)
PALETTE: dict[str, Color] = {
    "tcp": (120, 120, 120),
    "ws": (230, 140, 40),
    "p2p": (40, 120, 220),
    "raw-dc": (60, 170, 90),
}

# 5x7 glyphs, rows top to bottom; lowercase letters are drawn as capitals.
_FONT_ROWS = {
    "A": ".###.#...##...#######...##...##...#", "B": "####.#...##...#####.#...##...#####.",
    "C": ".###.#...##....#....#....#...#.###.", "D": "####.#...##...##...##...##...#####.",
    "E": "######....#....####.#....#....#####", "F": "######....#....####.#....#....#....",
    "G": ".###.#...##....#.####...##...#.####", "H": "#...##...##...#######...##...##...#",
    "I": ".###...#....#....#....#....#...###.", "J": "..###...#....#....#....#.#..#..##..",
    "K": "#...##..#.#.#..##...#.#..#..#.#...#", "L": "#....#....#....#....#....#....#####",
    "M": "#...###.###.#.##.#.##...##...##...#", "N": "#...##...###..##.#.##..###...##...#",
    "O": ".###.#...##...##...##...##...#.###.", "P": "####.#...##...#####.#....#....#....",
    "Q": ".###.#...##...##...##.#.##..#..##.#", "R": "####.#...##...#####.#.#..#..#.#...#",
    "S": ".#####....#.....###.....#....#####.", "T": "#####..#....#....#....#....#....#..",
    "U": "#...##...##...##...##...##...#.###.", "V": "#...##...##...##...##...#.#.#...#..",
    "W": "#...##...##...##.#.##.#.##.#.#.#.#.", "X": "#...##...#.#.#...#...#.#.#...##...#",
    "Y": "#...##...#.#.#...#....#....#....#..", "Z": "#####....#...#...#...#...#....#####",
    "0": ".###.#...##..###.#.###..##...#.###.", "1": "..#...##....#....#....#....#...###.",
    "2": ".###.#...#....#...#...#...#...#####", "3": "####.....#....#.###.....#....#####.",
    "4": "...#...##..#.#.#..#.#####...#....#.", "5": "######....####.....#....##...#.###.",
    "6": "..##..#...#....####.#...##...#.###.", "7": "#####....#...#...#...#....#....#...",
    "8": ".###.#...##...#.###.#...##...#.###.", "9": ".###.#...##...#.####....#...#..##..",
    ".": "..........................##...##..",
    ",": "....................##....#...#....", ":": "......##...##........##...##.......",
    "/": ".........#...#...#...#...#.........", "%": "##...##..#...#...#...#...#..##...##",
    "-": "...............#####...............", "(": "...#...#...#....#....#.....#.....#.",
    ")": ".#.....#.....#....#....#...#...#...", "_": "..............................#####",
    "+": "......#....#..#####..#....#........", "=": "..........#####.....#####..........",
    ">": ".#.....#.....#.....#...#...#...#...", "<": "...#...#...#...#.....#.....#.....#.",
    " ": "." * 35,
}  # fmt: skip
GLYPH_W, GLYPH_H = 5, 7


def _glyph(ch: str) -> str:
    return _FONT_ROWS.get(ch.upper(), _FONT_ROWS.get(ch, "#" * 35))


class Canvas:
    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def rect(self, x: int, y: int, w: int, h: int, color: Color) -> None:
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(self.width, x + w), min(self.height, y + h)
        if x1 <= x0 or y1 <= y0:
            return
        row = bytes(color) * (x1 - x0)
        for yy in range(y0, y1):
            start = (yy * self.width + x0) * 3
            self.pixels[start : start + len(row)] = row

    def text(self, x: int, y: int, s: str, color: Color = BLACK, scale: int = 2) -> int:
        """Draw ``s`` with its top-left at (x, y); returns the x after the last glyph."""
        for ch in s:
            glyph = _glyph(ch)
            for gy in range(GLYPH_H):
                for gx in range(GLYPH_W):
                    if glyph[gy * GLYPH_W + gx] == "#":
                        self.rect(x + gx * scale, y + gy * scale, scale, scale, color)
            x += (GLYPH_W + 1) * scale
        return x

    @staticmethod
    def text_width(s: str, scale: int = 2) -> int:
        return len(s) * (GLYPH_W + 1) * scale

    def png(self) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * self.width * 3 : (y + 1) * self.width * 3])
            for y in range(self.height)
        )

        def chunk(tag: bytes, data: bytes) -> bytes:
            body = tag + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


@dataclass(frozen=True)
class Bar:
    label: str
    value: float | None
    text: str
    color: Color


@dataclass(frozen=True)
class Panel:
    title: str
    bars: Sequence[Bar]


def draw(panels: Sequence[Panel], title: str, path: Path, width: int = 1000) -> Path:
    """Horizontal bars, one panel under the other, each scaled to its own maximum."""
    scale, line = 2, 26
    label_w = max((Canvas.text_width(b.label, scale) for p in panels for b in p.bars), default=100)
    left = 20 + label_w + 10
    right_text = 190
    bar_w = width - left - right_text
    height = 60 + sum(40 + line * len(p.bars) + 20 for p in panels)
    canvas = Canvas(width, height)
    canvas.text(20, 16, title, BLACK, 3)
    y = 60
    for panel in panels:
        canvas.text(20, y, panel.title, BLACK, scale)
        y += 30
        top = max((b.value or 0.0 for b in panel.bars), default=0.0) or 1.0
        canvas.rect(left, y - 4, 1, line * len(panel.bars) + 4, GREY)
        for bar in panel.bars:
            canvas.text(20, y + 5, bar.label, BLACK, scale)
            if bar.value:
                w = max(1, round(bar_w * bar.value / top))
                canvas.rect(left + 1, y + 2, w, line - 6, bar.color)
                canvas.text(left + w + 8, y + 5, bar.text, BLACK, scale)
            else:
                canvas.text(left + 8, y + 5, bar.text or "n/a", GREY, scale)
            y += line
        y += 30
    path.write_bytes(canvas.png())
    return path
