"""Latency over time as a PNG (Pillow, already installed with torchvision): one dot per request.

The y axis is logarithmic so a tail ten times the median stays visible; failed requests are
red marks along the top; the SLO is a dashed line; phases are shaded bands.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .runner import RequestRecord
from .schedule import Phase

WIDTH, HEIGHT, MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 1000, 480, 70, 20, 40, 50
PHASE_SHADES = ((245, 245, 245), (228, 236, 248))
DOT, ERROR, SLO = (31, 119, 180), (214, 39, 40), (90, 90, 90)


def plot_latency(records: list[RequestRecord], phases: list[Phase], slo_s: float, path: Path, title: str,
                 start_s: float = 0.0) -> Path:
    """`phases` are those plotted, the first starting at `start_s` of the run (after a warm-up, say)."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    total_s = sum(p.duration_s for p in phases)
    latencies = [r.latency_s * 1000 for r in records if r.ok] + [slo_s * 1000]
    low, high = _log_range(min(latencies), max(latencies))

    def x(seconds: float) -> float:
        return MARGIN_LEFT + seconds / total_s * (WIDTH - MARGIN_LEFT - MARGIN_RIGHT)

    def y(ms: float) -> float:
        fraction = (math.log10(max(ms, low)) - math.log10(low)) / (math.log10(high) - math.log10(low))
        return HEIGHT - MARGIN_BOTTOM - fraction * (HEIGHT - MARGIN_TOP - MARGIN_BOTTOM)

    _shade_phases(draw, font, phases, x)
    _axes(draw, font, low, high, total_s, x, y)
    for r in records:
        if r.ok:
            px, py = x(r.due_s - start_s), y(r.latency_s * 1000)
            draw.rectangle((px - 1, py - 1, px + 1, py + 1), fill=DOT)
        else:
            px = x(r.due_s - start_s)
            draw.line((px, MARGIN_TOP + 2, px, MARGIN_TOP + 10), fill=ERROR, width=2)
    for left in range(MARGIN_LEFT, WIDTH - MARGIN_RIGHT, 12):
        draw.line((left, y(slo_s * 1000), left + 6, y(slo_s * 1000)), fill=SLO)
    draw.text((MARGIN_LEFT, 10), f"{title}   (dashed: SLO {slo_s * 1000:.0f} ms; red: failed)", fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _log_range(low_ms: float, high_ms: float) -> tuple[float, float]:
    low = 10 ** math.floor(math.log10(max(low_ms, 0.1)))
    return low, max(10 ** math.ceil(math.log10(max(high_ms, low * 10))), low * 10)


def _shade_phases(draw, font, phases: list[Phase], x) -> None:
    start = 0.0
    for i, phase in enumerate(phases):
        end = start + phase.duration_s
        draw.rectangle((x(start), MARGIN_TOP, x(end), HEIGHT - MARGIN_BOTTOM), fill=PHASE_SHADES[i % 2])
        draw.text((x(start) + 4, MARGIN_TOP + 12), f"{phase.name} {phase.rate:g}/s", fill=(80, 80, 80), font=font)
        start = end


def _axes(draw, font, low: float, high: float, total_s: float, x, y) -> None:
    bottom = HEIGHT - MARGIN_BOTTOM
    draw.line((MARGIN_LEFT, MARGIN_TOP, MARGIN_LEFT, bottom), fill="black")
    draw.line((MARGIN_LEFT, bottom, WIDTH - MARGIN_RIGHT, bottom), fill="black")
    tick = low
    while tick <= high:
        draw.line((MARGIN_LEFT - 5, y(tick), MARGIN_LEFT, y(tick)), fill="black")
        draw.text((5, y(tick) - 6), f"{tick:g} ms", fill="black", font=font)
        tick *= 10
    step = max(1, round(total_s / 10))
    for second in range(0, int(total_s) + 1, step):
        draw.line((x(second), bottom, x(second), bottom + 5), fill="black")
        draw.text((x(second) - 6, bottom + 8), f"{second}s", fill="black", font=font)
    draw.text((WIDTH // 2 - 60, HEIGHT - 18), "time since start (due time)", fill="black", font=font)
