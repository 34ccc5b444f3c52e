"""The drill chart: lower case drawn as written, the judge's boundary, and the verdict."""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from pathlib import Path

from drill_reports import report_of

from qworker import chart, drill
from qworker.canary.judge import Decision, RoleCounts, Verdict, judge
from qworker.drill import report as drill_report


def colors_of(png: bytes) -> Counter[bytes]:
    """Pixel colours of a PNG written by `chart.png_bytes` (filter 'none' on every row)."""
    width, height = struct.unpack(">II", png[16:24])
    start = png.index(b"IDAT") + 4
    (length,) = struct.unpack(">I", png[start - 8 : start - 4])
    raw = zlib.decompress(png[start : start + length])
    stride = 1 + 3 * width
    pixels = b"".join(raw[row * stride + 1 : (row + 1) * stride] for row in range(height))
    return Counter(pixels[i : i + 3] for i in range(0, len(pixels), 3))


def drawn(text: str) -> bytes:
    canvas = chart.Canvas(120, 12)
    canvas.text(0, 0, text, (0, 0, 0), scale=1)
    return bytes(canvas.pixels)


CELL_ROWS = chart.GLYPH_HEIGHT + chart.DESCENDER


def read_back(text: str) -> list[tuple[str, ...]]:
    """Each character's cell of `drawn(text)`, read back as glyph rows ('#' ink, '.' paper)."""
    pixels = drawn(text)
    step = chart.GLYPH_WIDTH + 1

    def ink(x: int, y: int) -> str:
        return "#" if pixels[(y * 120 + x) * 3] == 0 else "."

    return [
        tuple(
            "".join(ink(index * step + column, row) for column in range(chart.GLYPH_WIDTH))
            for row in range(CELL_ROWS)
        )
        for index in range(len(text))
    ]


def glyph(char: str) -> tuple[str, ...]:
    """The font's rows for `char`, padded with blank rows down to the descenders' depth."""
    rows = tuple(chart.FONT[char])
    return rows + ("." * chart.GLYPH_WIDTH,) * (CELL_ROWS - len(rows))


def inked(pixels: bytes) -> int:
    return sum(1 for i in range(0, len(pixels), 3) if pixels[i] == 0)


def test_every_lower_case_letter_has_its_own_glyph() -> None:
    for letter in "abcdefghijklmnopqrstuvwxyz":
        assert letter in chart.FONT
        assert chart.FONT[letter] != chart.FONT[letter.upper()], letter


def test_text_is_drawn_as_written() -> None:
    text = "v1.5.0-rc1"

    assert read_back(text) == [glyph(char) for char in text]  # each cell holds its own glyph
    assert inked(drawn(text)) == sum(row.count("#") for char in text for row in glyph(char))
    assert drawn(text) != drawn(text.upper())
    assert read_back("\u00e9") == [glyph("?")]  # a character the font lacks


def test_descenders_go_below_the_baseline() -> None:
    def lowest_row(text: str) -> int:
        pixels = drawn(text)
        rows = [y for y in range(12) if any(pixels[(y * 120 + x) * 3] == 0 for x in range(120))]
        return max(rows)

    assert lowest_row("a") == chart.GLYPH_HEIGHT - 1
    assert lowest_row("g") == lowest_row("y") == chart.GLYPH_HEIGHT + chart.DESCENDER - 1


def test_dashed_series_and_a_labelled_point_are_drawn() -> None:
    ring, dashed = (200, 0, 200), (0, 150, 0)
    png = chart.line_chart(
        [
            chart.Series("canary", [(0, 1.0), (10, 4.0)], (200, 0, 0)),
            chart.Series("boundary", [(0, 2.0), (10, 2.0)], dashed, dash=(10, 6)),
        ],
        title="t",
        x_label="x",
        y_label="y",
        points=[chart.Point(10, 4.0, "fail: z 3.1 >= 2.4", ring)],
        width=400,
        height=260,
    )
    colors = colors_of(png)
    assert colors[bytes(ring)] > 100
    assert colors[bytes(dashed)] > 100


def test_a_dashed_line_is_drawn_in_dashes() -> None:
    canvas = chart.Canvas(100, 3)
    canvas.line(0, 1, 99, 1, (0, 0, 0), dash=(10, 6))

    row = "".join("#" if canvas.pixels[(100 + x) * 3] == 0 else "." for x in range(100))
    assert row == ("#" * 10 + "." * 6) * 6 + "#" * 4


def looks(canary_rate: float, minutes: int) -> list[Verdict]:
    found = []
    for minute in range(1, minutes + 1):
        n_c, n_p = 40 * minute, 360 * minute
        canary = RoleCounts(n_c, int(n_c * canary_rate), n_c, 5.0)
        primary = RoleCounts(n_p, int(n_p * 0.01), n_p, 5.0)
        found.append(judge(canary, primary, minute * 30.0, policy=drill.DRILL_POLICY))
        if found[-1].decision in {Decision.FAIL, Decision.PASS}:
            break
    return found


def test_the_canary_crosses_the_boundary_exactly_when_the_difference_passes_the_margin() -> None:
    history = looks(0.02, 12) + looks(0.06, 6)
    margin, _ = drill_report.boundary_series(history)
    judged = [v.evidence for v in history if v.evidence.difference is not None]

    assert len(margin) == len(judged) > 2
    above = [ev.canary_rate * 100 > y for ev, (_, y) in zip(judged, margin, strict=True)]  # type: ignore[operator]
    beyond = [ev.difference > ev.margin for ev in judged]  # type: ignore[operator]
    assert above == beyond
    assert True in above
    assert False in above


def test_a_failed_drill_draws_the_boundary_and_says_what_decided(tmp_path: Path) -> None:
    history = looks(0.06, 10)
    verdict = history[-1]
    assert verdict.decision is Decision.FAIL

    (point,) = drill_report.verdict_point(verdict)
    ev = verdict.evidence
    assert point.label == f"fail: z {ev.z:.2f} >= {ev.critical_z:.2f}"
    assert (point.x, point.y) == (ev.elapsed_s, ev.canary_rate * 100)  # type: ignore[operator]
    report = report_of(history, tmp_path, primary_version="v1.4.2", canary_version="v1.5.0-rc1")
    colors = colors_of(drill.render_chart(report))
    assert colors[bytes(drill_report.MARGIN_COLOR)] > 100
    assert colors[bytes(drill_report.DECISION_COLOR)] > 100
    assert colors[bytes(drill_report.BOUND_COLOR)] == 0  # a fail is decided by z, not the bound


def test_a_passed_drill_draws_the_upper_bound_under_the_boundary(tmp_path: Path) -> None:
    history = looks(0.0095, 40)
    verdict = history[-1]
    assert verdict.decision is Decision.PASS

    (point,) = drill_report.verdict_point(verdict)
    assert point.label.startswith("pass: bound ")
    margin, bound = drill_report.boundary_series(history)
    assert bound[-1][1] < margin[-1][1]
    report = report_of(history, tmp_path, primary_version="v1.4.2", canary_version="v1.5.0-rc1")
    colors = colors_of(drill.render_chart(report))
    assert colors[bytes(drill_report.BOUND_COLOR)] > 100
