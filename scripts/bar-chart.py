#!/usr/bin/env python3
"""Draws one horizontal bar chart (SVG, no dependencies) from a column of a results TSV,
the median per group of rows: the charts of results/<date>-per-byte and -latency-at-half.

Usage: scripts/bar-chart.py RUNS_TSV GROUP_COLUMN VALUE_COLUMN TITLE OUT_SVG [--log]
  RUNS_TSV: a runs.tsv of scripts/produce-per-byte.sh or latency-at-half.sh (lines with
  '#' are comments, the first other line names the columns); rows whose value is not a
  number are left out. --log: a logarithmic axis (latencies over four decades).
"""

import math
import statistics
import sys
from xml.sax.saxutils import escape


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--log"]
    log = "--log" in sys.argv[1:]
    if len(args) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    path, group_col, value_col, title, out = args
    header = None
    groups: dict[str, list[float]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            cells = line.rstrip("\n").split("\t")
            if header is None:
                header = cells
                if group_col not in header or value_col not in header:
                    print(f"{path} has no column {group_col!r} or {value_col!r}", file=sys.stderr)
                    return 2
                continue
            row = dict(zip(header, cells))
            try:
                value = float(row.get(value_col, ""))
            except ValueError:
                continue
            if math.isfinite(value):
                groups.setdefault(row.get(group_col, "?"), []).append(value)
    if not groups:
        print(f"no numbers in column {value_col!r} of {path}", file=sys.stderr)
        return 1
    bars = [(name, statistics.median(values), len(values)) for name, values in groups.items()]
    top = max(v for _, v, _ in bars)
    low = min((v for _, v, _ in bars if v > 0), default=1.0)
    if log:
        lo = 10 ** math.floor(math.log10(low))
        hi = 10 ** math.ceil(math.log10(top)) if top > 0 else 10 * lo

        def scale(v: float) -> float:
            return 0.0 if v <= lo else math.log10(v / lo) / math.log10(hi / lo)
    else:
        hi = top if top > 0 else 1.0

        def scale(v: float) -> float:
            return max(v, 0.0) / hi

    label_w, bar_w, row_h, top_pad = 170, 420, 28, 46
    width = label_w + bar_w + 110
    height = top_pad + row_h * len(bars) + 30
    out_lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
        f'<text x="10" y="36" fill="#555">median of the runs in {escape(path.split("/")[-1])}'
        f' ({escape(value_col)}{", log scale" if log else ""})</text>',
    ]
    for i, (name, value, runs) in enumerate(bars):
        y = top_pad + i * row_h
        w = bar_w * scale(value)
        out_lines.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{escape(name)}</text>'
        )
        out_lines.append(
            f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" fill="#4878a8"/>'
        )
        out_lines.append(
            f'<text x="{label_w + w + 6:.1f}" y="{y + 17}">{value:,.3g} ({runs} runs)</text>'
        )
    out_lines.append("</svg>")
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(out_lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
