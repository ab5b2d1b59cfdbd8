# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Hand-written SVG chart of the benchmark: packets/s per backend and workload.

One horizontal bar per (workload, size, backend): the median packets/s, with a thin
line from the smallest to the largest repeat, on a logarithmic axis (the ring rows run
at millions of packets per second, the uplink rows at hundreds of thousands). No
plotting library needed.
"""

import math
from xml.sax.saxutils import escape

PALETTE = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]


VMIN = 0.01  # Mpps at the left edge


def decade_max(v):
    """The power of ten >= v (Mpps), at least 1."""
    return 10.0 ** max(0, math.ceil(math.log10(v))) if v > 0 else 1.0


def svg(doc):
    # A --peer has TAP rows only: leave its skipped rows out of the picture.
    rows = [r for r in doc["rows"] if "TAP rows only" not in r.get("skipped", "")]
    backends = []
    for r in rows:
        if r["backend"] not in backends:
            backends.append(r["backend"])
    color = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(backends)}
    groups = []
    for r in rows:
        key = (r["workload"], r["size"])
        if not groups or groups[-1][0] != key:
            groups.append((key, []))
        groups[-1][1].append(r)

    bar_h, gap, label_w, plot_w, top = 14, 10, 150, 620, 70
    vmax = decade_max(max([r.get("pps_max", 0) for r in rows] + [1]) / 1e6)
    span = math.log10(vmax) - math.log10(VMIN)

    def xpos(mpps):
        f = (math.log10(max(mpps, VMIN)) - math.log10(VMIN)) / span
        return label_w + plot_w * f

    height = top + sum(len(g) * bar_h + gap for _, g in groups) + 40
    width = label_w + plot_w + 150
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">'
           f'{escape("vhost-netmem benchmark: packets/s (median, min-max)")}</text>',
           f'<text x="10" y="36" fill="#555">{escape(doc["meta"]["started"] + ", " + doc["meta"]["mode"] + " run")}</text>']
    lx = 10
    for b in backends:
        out.append(f'<rect x="{lx}" y="46" width="10" height="10" fill="{color[b]}"/>')
        out.append(f'<text x="{lx + 14}" y="55">{escape(b)}</text>')
        lx += 24 + 7 * len(b)
    # Grid and axis.
    y_end = height - 30
    v = VMIN
    while v <= vmax * 1.001:
        for m in (1, 2, 5):
            if m * v > vmax * 1.001:
                break
            x = xpos(m * v)
            out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{y_end}" '
                       f'stroke="{"#bbb" if m == 1 else "#eee"}"/>')
            out.append(f'<text x="{x:.1f}" y="{y_end + 14}" text-anchor="middle">{m * v:g}</text>')
        v *= 10
    out.append(f'<text x="{label_w + plot_w / 2}" y="{y_end + 28}" text-anchor="middle">'
               f'Mpps (log scale)</text>')
    y = top
    for (wl, size), g in groups:
        out.append(f'<text x="{label_w - 6}" y="{y + len(g) * bar_h / 2 + 4:.1f}" '
                   f'text-anchor="end" font-weight="bold">{escape(f"{wl} {size} B")}</text>')
        for r in g:
            if "pps" in r:
                w = xpos(r["pps"] / 1e6) - label_w
                out.append(f'<rect x="{label_w}" y="{y + 1}" width="{w:.1f}" height="{bar_h - 2}" '
                           f'fill="{color[r["backend"]]}"><title>{escape(r["backend"])}: '
                           f'{r["pps"] / 1e6:.3f} Mpps</title></rect>')
                x0 = xpos(r["pps_min"] / 1e6)
                x1 = xpos(r["pps_max"] / 1e6)
                ym = y + bar_h / 2
                out.append(f'<line x1="{x0:.1f}" y1="{ym}" x2="{x1:.1f}" y2="{ym}" stroke="black"/>')
                out.append(f'<text x="{max(w, x1 - label_w) + label_w + 4:.1f}" y="{y + bar_h - 3}">'
                           f'{r["pps"] / 1e6:.3f}</text>')
            else:
                what = "skipped" if "skipped" in r else "failed"
                out.append(f'<text x="{label_w + 4}" y="{y + bar_h - 3}" fill="#888">'
                           f'{escape(r["backend"])}: {what}</text>')
            y += bar_h
        y += gap
    out.append("</svg>")
    return "\n".join(out) + "\n"
