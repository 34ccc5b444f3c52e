"""A small line chart written as a PNG, with no dependency beyond the standard library.

`line_chart()` draws series of (x, y) points with axes, ticks, grid, a title, axis labels, a
legend, optional dashed marker lines and labelled points, and returns the PNG file's bytes. Text
uses the built-in 5x7 pixel font of `qworker.chart_font` (upper and lower case, digits, common
punctuation), scaled up, so version tags and labels read as written. It is enough for the
canary drill's failure-rate chart; it is not a plotting library.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, final

from qworker.chart_font import DESCENDER, FONT, GLYPH_HEIGHT, GLYPH_WIDTH

__all__ = [
    "DESCENDER",
    "FONT",
    "GLYPH_HEIGHT",
    "GLYPH_WIDTH",
    "Canvas",
    "Line",
    "Point",
    "Series",
    "line_chart",
    "nice_ticks",
    "png_bytes",
]

Color = tuple[int, int, int]

WHITE: Final[Color] = (255, 255, 255)
BLACK: Final[Color] = (0, 0, 0)
GRID: Final[Color] = (225, 225, 225)
AXIS: Final[Color] = (60, 60, 60)


def png_bytes(width: int, height: int, rgb: bytes | bytearray) -> bytes:
    """Encode 8-bit RGB pixels (rows top to bottom) as a PNG file.

    Args:
        width: Pixels per row.
        height: Rows.
        rgb: `width * height * 3` bytes.

    Raises:
        ValueError: The pixel buffer has the wrong size.
    """
    stride = width * 3
    if len(rgb) != stride * height or width <= 0 or height <= 0:
        raise ValueError(f"expected {stride * height} bytes of RGB for {width}x{height}")
    raw = b"".join(b"\x00" + bytes(rgb[row * stride : (row + 1) * stride]) for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(raw, 9)),
            chunk(b"IEND", b""),
        )
    )


@final
class Canvas:
    """An RGB pixel buffer with a few drawing operations."""

    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        """Create a `width` x `height` canvas filled with `background`."""
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(background) * (width * height))

    def set(self, x: int, y: int, color: Color) -> None:
        """Colour one pixel; points outside the canvas are ignored."""
        if 0 <= x < self.width and 0 <= y < self.height:
            offset = (y * self.width + x) * 3
            self.pixels[offset : offset + 3] = bytes(color)

    def fill_rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Fill the rectangle with corners (x0, y0) and (x1, y1), both included."""
        for y in range(max(0, min(y0, y1)), min(self.height, max(y0, y1) + 1)):
            for x in range(max(0, min(x0, x1)), min(self.width, max(x0, x1) + 1)):
                self.set(x, y, color)

    def line(
        self,
        x0: int,
        y0: int,
        x1: int,
        y1: int,
        color: Color,
        *,
        thickness: int = 1,
        dash: tuple[int, int] | None = None,
    ) -> None:
        """Draw a line (Bresenham), `thickness` pixels wide, optionally dashed (on, off)."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        error = dx + dy
        low, high = -((thickness - 1) // 2), thickness // 2
        step = 0
        while True:
            if dash is None or step % (dash[0] + dash[1]) < dash[0]:
                self.fill_rect(x0 + low, y0 + low, x0 + high, y0 + high, color)
            if x0 == x1 and y0 == y1:
                return
            step += 1
            doubled = 2 * error
            if doubled >= dy:
                error += dy
                x0 += sx
            if doubled <= dx:
                error += dx
                y0 += sy

    @staticmethod
    def text_width(text: str, scale: int = 2) -> int:
        """The width in pixels of `text` drawn at `scale`."""
        return max(0, len(text) * (GLYPH_WIDTH + 1) * scale - scale)

    def text(
        self,
        x: int,
        y: int,
        text: str,
        color: Color = BLACK,
        *,
        scale: int = 2,
        align: str = "left",
        vertical: bool = False,
    ) -> None:
        """Draw `text` with its top-left corner at (x, y).

        Args:
            x: Left edge (right edge or centre per `align`); for vertical text, the left edge.
            y: Top edge; for vertical text, the bottom edge (or centre per `align`).
            text: The text; a character the font lacks is drawn as its upper case, else as '?'.
            color: The colour.
            scale: Pixels per font pixel.
            align: `left`, `center` or `right` along the text's direction.
            vertical: Draw bottom to top (a y-axis label).
        """
        width = self.text_width(text, scale)
        shift = {"left": 0, "center": width // 2, "right": width}[align]
        for index, char in enumerate(text):
            glyph = FONT.get(char) or FONT.get(char.upper(), FONT["?"])
            origin = index * (GLYPH_WIDTH + 1) * scale - shift
            for row, bits in enumerate(glyph):
                for column, bit in enumerate(bits):
                    if bit != "#":
                        continue
                    along, across = origin + column * scale, row * scale
                    if vertical:
                        px, py = x + across, y - along - scale + 1
                    else:
                        px, py = x + along, y + across
                    self.fill_rect(px, py, px + scale - 1, py + scale - 1, color)

    def png(self) -> bytes:
        """The canvas as a PNG file."""
        return png_bytes(self.width, self.height, self.pixels)


@final
@dataclass(frozen=True, slots=True)
class Series:
    """One line of the chart."""

    label: str
    points: Sequence[tuple[float, float]]
    color: Color
    dash: tuple[int, int] | None = None
    """Dashed (pixels on, off) and without dots at the points; `None`: solid, dotted points."""


@final
@dataclass(frozen=True, slots=True)
class Point:
    """A labelled ring around one point of the plot (e.g. where a decision was taken)."""

    x: float
    y: float
    label: str
    color: Color


@final
@dataclass(frozen=True, slots=True)
class Line:
    """A dashed marker line across the plot: vertical at x, or horizontal at y."""

    value: float
    label: str
    color: Color
    vertical: bool = True


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """About `count` round ticks (1, 2, 2.5 or 5 times a power of ten) covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw)
    first = math.floor(low / step + 1e-9)
    last = math.ceil(high / step - 1e-9)
    return [round(index * step, 10) for index in range(first, last + 1)]


@dataclass(slots=True)
class _Frame:
    """Maps data coordinates to the plot area's pixels."""

    left: int
    top: int
    right: int
    bottom: int
    x_ticks: list[float] = field(default_factory=list)
    y_ticks: list[float] = field(default_factory=list)

    def px(self, x: float) -> int:
        low, high = self.x_ticks[0], self.x_ticks[-1]
        return self.left + round((x - low) / (high - low) * (self.right - self.left))

    def py(self, y: float) -> int:
        low, high = self.y_ticks[0], self.y_ticks[-1]
        return self.bottom - round((y - low) / (high - low) * (self.bottom - self.top))


def _axes(
    canvas: Canvas,
    frame: _Frame,
    x_format: Callable[[float], str],
    y_format: Callable[[float], str],
) -> None:
    for tick in frame.y_ticks:
        y = frame.py(tick)
        canvas.line(frame.left, y, frame.right, y, GRID)
        canvas.line(frame.left - 6, y, frame.left, y, AXIS)
        canvas.text(frame.left - 10, y - GLYPH_HEIGHT, y_format(tick), AXIS, align="right")
    for tick in frame.x_ticks:
        x = frame.px(tick)
        canvas.line(x, frame.top, x, frame.bottom, GRID)
        canvas.line(x, frame.bottom, x, frame.bottom + 6, AXIS)
        canvas.text(x, frame.bottom + 12, x_format(tick), AXIS, align="center")
    canvas.line(frame.left, frame.top, frame.left, frame.bottom, AXIS, thickness=2)
    canvas.line(frame.left, frame.bottom, frame.right, frame.bottom, AXIS, thickness=2)


LEGEND_ROW: Final = 24


def _legend_rows(entries: Sequence[Series], width: int) -> list[list[Series]]:
    """The legend's entries in rows that fit `width`."""
    rows: list[list[Series]] = [[]]
    used = 0
    for entry in entries:
        entry_width = Canvas.text_width(entry.label) + 90
        if rows[-1] and used + entry_width > width:
            rows.append([])
            used = 0
        rows[-1].append(entry)
        used += entry_width
    return rows


def _legend(canvas: Canvas, frame: _Frame, rows: Sequence[Sequence[Series]]) -> None:
    """Rows of entries, each centred, between the title and the plot."""
    for index, row in enumerate(rows):
        widths = [Canvas.text_width(entry.label) + 60 for entry in row]
        total = sum(widths) + 30 * (len(row) - 1)
        x = (frame.left + frame.right - total) // 2
        y = frame.top - 24 - LEGEND_ROW * (len(rows) - 1 - index)
        for entry, entry_width in zip(row, widths, strict=True):
            canvas.line(x, y, x + 40, y, entry.color, thickness=3, dash=entry.dash and (8, 4))
            if entry.dash is None:
                canvas.fill_rect(x + 17, y - 3, x + 23, y + 3, entry.color)
            canvas.text(x + 50, y - GLYPH_HEIGHT, entry.label, BLACK)
            x += entry_width + 30


def _ring(canvas: Canvas, x: int, y: int, radius: int, color: Color) -> None:
    for degree in range(0, 360, 3):
        angle = math.radians(degree)
        px, py = x + round(radius * math.cos(angle)), y + round(radius * math.sin(angle))
        canvas.fill_rect(px - 1, py - 1, px + 1, py + 1, color)


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    lines: Sequence[Line] = (),
    points: Sequence[Point] = (),
    width: int = 1000,
    height: int = 560,
    x_min: float | None = None,
    y_min: float = 0.0,
    x_format: Callable[[float], str] = lambda v: f"{v:g}",
    y_format: Callable[[float], str] = lambda v: f"{v:g}",
) -> bytes:
    """Draw `series` as lines (with a dot at each point) and return the PNG file's bytes.

    Args:
        series: The lines; each needs at least one point to show.
        title: Drawn above the plot.
        x_label: Below the x axis.
        y_label: Beside the y axis, bottom to top.
        lines: Dashed marker lines, labelled beside them.
        points: Points circled and labelled (left of the point, or right near the left edge).
        width: Image width in pixels.
        height: Image height in pixels.
        x_min: The x axis starts here or lower (default: at the smallest x).
        y_min: The y axis starts here or lower.
        x_format: Formats x tick labels.
        y_format: Formats y tick labels.
    """
    xs = [x for s in series for x, _ in s.points] + [m.value for m in lines if m.vertical]
    ys = [y for s in series for _, y in s.points] + [m.value for m in lines if not m.vertical]
    xs += [p.x for p in points]
    ys += [p.y for p in points]
    y_max = max(ys, default=1.0)
    legend = _legend_rows([s for s in series if s.label], width - 150)
    top = 100 + LEGEND_ROW * (len(legend) - 1)
    frame = _Frame(left=110, top=top, right=width - 40, bottom=height - 80)
    x_low = min(xs, default=0.0) if x_min is None else min([x_min, *xs])
    frame.x_ticks = nice_ticks(x_low, max(xs, default=1.0))
    frame.y_ticks = nice_ticks(min([y_min, *ys]), y_max + (y_max - y_min) * 0.08)
    canvas = Canvas(width, height)
    canvas.text(width // 2, 20, title, BLACK, scale=3, align="center")
    _axes(canvas, frame, x_format, y_format)
    canvas.text((frame.left + frame.right) // 2, height - 36, x_label, BLACK, align="center")
    canvas.text(18, (frame.top + frame.bottom) // 2, y_label, BLACK, align="center", vertical=True)
    for marker in lines:
        if marker.vertical:
            x = frame.px(marker.value)
            canvas.line(x, frame.top, x, frame.bottom, marker.color, thickness=2, dash=(10, 6))
            canvas.text(x - 6, frame.top + 8, marker.label, marker.color, align="right")
        else:
            y = frame.py(marker.value)
            canvas.line(frame.left, y, frame.right, y, marker.color, thickness=2, dash=(10, 6))
            # At the left: the right end is where a decision marker usually stands.
            canvas.text(frame.left + 8, y - 20, marker.label, marker.color)
    for s in series:
        pixels = [(frame.px(x), frame.py(y)) for x, y in s.points]
        for (x0, y0), (x1, y1) in itertools.pairwise(pixels):
            canvas.line(x0, y0, x1, y1, s.color, thickness=2 if s.dash else 3, dash=s.dash)
        if s.dash is None:
            for x, y in pixels:
                canvas.fill_rect(x - 3, y - 3, x + 3, y + 3, s.color)
    for point in points:
        x, y = frame.px(point.x), frame.py(point.y)
        _ring(canvas, x, y, 9, point.color)
        label_width = Canvas.text_width(point.label)
        left = x - 14 - label_width > frame.left
        x0 = x - 14 - label_width if left else x + 14
        # Above the ring in the plot's lower half, below it in the upper half; on a white box.
        y0 = y - 34 if y > (frame.top + frame.bottom) // 2 else y + 16
        canvas.fill_rect(x0 - 4, y0 - 4, x0 + label_width + 4, y0 + 2 * GLYPH_HEIGHT + 3, WHITE)
        canvas.text(x0, y0, point.label, point.color)
    _legend(canvas, frame, legend)
    return canvas.png()
