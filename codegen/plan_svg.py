"""A picture of an arena plan: tensor lifetimes (x: kernel steps) against arena offsets
(y: bytes), one rectangle per tensor or kernel workspace, as a standalone SVG file."""
from __future__ import annotations

from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT, MARGIN = 900, 480, 60
COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f")
WORKSPACE_COLOR = "#bab0ac"


@dataclass(frozen=True)
class Rect:
    label: str
    first: int
    last: int
    offset: int
    size: int
    workspace: bool = False


def arena_svg(rects: list[Rect], arena_bytes: int, steps: int, title: str) -> str:
    """SVG text; deterministic for the same plan."""
    steps = max(steps, 1)
    arena = max(arena_bytes, 1)
    sx = (WIDTH - 2 * MARGIN) / steps
    sy = (HEIGHT - 2 * MARGIN) / arena
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'font-family="sans-serif" font-size="10">',
           f'<text x="{MARGIN}" y="24" font-size="14">{escape(title)}</text>',
           f'<rect x="{MARGIN}" y="{MARGIN}" width="{WIDTH - 2 * MARGIN}" height="{HEIGHT - 2 * MARGIN}" '
           'fill="none" stroke="#333"/>',
           f'<text x="{MARGIN}" y="{HEIGHT - MARGIN + 16}">step 0</text>',
           f'<text x="{WIDTH - MARGIN}" y="{HEIGHT - MARGIN + 16}" text-anchor="end">step {steps - 1}</text>',
           f'<text x="{MARGIN - 6}" y="{HEIGHT - MARGIN}" text-anchor="end">0</text>',
           f'<text x="{MARGIN - 6}" y="{MARGIN + 4}" text-anchor="end">{arena_bytes:,} B</text>']
    for k, r in enumerate(sorted(rects, key=lambda r: (r.first, r.offset, r.label))):
        x = MARGIN + r.first * sx
        w = max((r.last - r.first + 1) * sx, 1.0)
        y = HEIGHT - MARGIN - (r.offset + r.size) * sy
        h = max(r.size * sy, 0.5)
        color = WORKSPACE_COLOR if r.workspace else COLORS[k % len(COLORS)]
        tip = f"{r.label}: {r.size:,} B at offset {r.offset:,}, steps {r.first}..{r.last}"
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{color}" '
                   f'fill-opacity="0.75" stroke="#222" stroke-width="0.5"><title>{escape(tip)}</title></rect>')
        if h >= 12 and w >= 40:
            room = int(w / 6)  # names share long prefixes (/features/...): show their ends
            label = r.label if len(r.label) <= room else "…" + r.label[-(room - 1):]
            out.append(f'<text x="{x + 3:.1f}" y="{y + 11:.1f}" fill="#111">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
