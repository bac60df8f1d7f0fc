"""Galleries of a benchmark run: an HTML page and a PNG contact sheet, systems side by side.

Each row is one benchmark item: the input, the ground truth when the benchmark has one, and every
system's output with the judge's verdict per perspective (yes/no and score; or why it failed).
Items are picked round-robin over categories, so a short gallery still shows every category.

Images are written into ``gallery/img/`` (long side capped at 512 px) under their content hash
(neutral names that reveal no system), so the folder is self-contained and can be zipped or
served as it is.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from core.images import cap_long_side, encode_png, image_hash, load_image
from core.rewards import PERSPECTIVES
from train.evaluate.benchmark_items import BenchmarkItem

LETTER = {"following": "F", "preserving": "P", "quality": "Q"}


def pick_items(items: Sequence[BenchmarkItem], n: int) -> list[BenchmarkItem]:
    """Up to ``n`` items, round-robin over categories (in first-seen order)."""
    by_cat: dict[str | None, list[BenchmarkItem]] = {}
    for it in items:
        by_cat.setdefault(it.category, []).append(it)
    out: list[BenchmarkItem] = []
    depth = 0
    while len(out) < n and any(depth < len(v) for v in by_cat.values()):
        for group in by_cat.values():
            if depth < len(group) and len(out) < n:
                out.append(group[depth])
        depth += 1
    return out


def verdict_text(frame: pd.DataFrame, system: str, item_id: str) -> tuple[str, bool]:
    """``"F yes 4.5 · P no 2.0 · Q yes 5.0"`` or ``"failed: <reason>"``; flag True when failed."""
    rows = frame[(frame["system"] == system) & (frame["item_id"] == item_id)]
    if rows.empty:
        return "no verdict", True
    if (rows["status"] == "failed").any():
        r = rows[rows["status"] == "failed"].iloc[0]
        return f"failed: {r['reason_code']}", True
    parts = []
    for p in PERSPECTIVES:
        r = rows[rows["perspective"] == p].iloc[0]
        parts.append(f"{LETTER[p]} {'yes' if r['passed'] else 'no'} {r['score']:.1f}")
    return " · ".join(parts), False


def _copy(src: Path | Image.Image, img_dir: Path, max_side: int = 512) -> str:
    """Save an image (long side capped) into img_dir under its content hash; return the
    relative path. The hash names it, so the file name says nothing about the system."""
    img = src if isinstance(src, Image.Image) else load_image(src)
    img = cap_long_side(img, max_side)
    name = f"{image_hash(img)}.png"
    if not (img_dir / name).exists():
        (img_dir / name).write_bytes(encode_png(img))
    return f"img/{name}"


def write_html(
    out_dir: str | Path,
    items: Sequence[BenchmarkItem],
    systems: Sequence[str],
    outputs: Mapping[tuple[str, str], Path | None],
    verdicts: pd.DataFrame,
    title: str = "Benchmark gallery",
) -> Path:
    """``out_dir/index.html`` with one row per item; ``outputs[(system, item_id)]`` is a file."""
    out = Path(out_dir)
    img_dir = out / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    has_target = any(i.target is not None for i in items)
    head = ["item", "input"] + (["ground truth"] if has_target else []) + list(systems)
    rows = []
    for it in items:
        cells = [
            f"<td class=meta><b>{html.escape(it.category or '')}</b><br>"
            f"<span class=instr>{html.escape(it.instruction)}</span><br>"
            f"<code>{html.escape(it.item_id)}</code></td>",
            f"<td><img src='{_copy(it.load_image(), img_dir)}'></td>",
        ]
        if has_target:
            t = it.load_target()
            cells.append(f"<td><img src='{_copy(t, img_dir)}'></td>" if t else "<td>-</td>")
        for s in systems:
            path = outputs.get((s, it.item_id))
            text, failed = verdict_text(verdicts, s, it.item_id)
            img = (
                f"<img src='{_copy(path, img_dir)}'>" if path else "<div class=none>no output</div>"
            )
            cls = "v bad" if failed else "v"
            cells.append(f"<td>{img}<div class='{cls}'>{html.escape(text)}</div></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    page = f"""<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:center}}
img{{width:160px;image-rendering:pixelated}} .meta{{text-align:left;max-width:220px}}
.instr{{font-size:90%}} .v{{font-size:80%;margin-top:2px}} .bad{{color:#b00}}
.none{{width:160px;height:160px;line-height:160px;background:#eee}}</style></head><body>
<h1>{html.escape(title)}</h1><p>F / P / Q: the judge's verdict (yes/no) and score (0-5) for
instruction following, detail preserving and generation quality.</p>
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr>
{chr(10).join(rows)}</table></body></html>"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def write_png(
    path: str | Path,
    items: Sequence[BenchmarkItem],
    systems: Sequence[str],
    outputs: Mapping[tuple[str, str], Path | None],
    verdicts: pd.DataFrame,
    cell: int = 128,
) -> Path:
    """A contact sheet: one row per item, columns input | ground truth | systems, with verdicts."""
    has_target = any(i.target is not None for i in items)
    cols = ["input"] + (["ground truth"] if has_target else []) + list(systems)
    font = ImageFont.load_default()
    label_h, head_h, side_w = 28, 20, 170
    width = side_w + len(cols) * (cell + 6)
    height = head_h + len(items) * (cell + label_h + 6)
    sheet = Image.new("RGB", (width, max(height, head_h + 1)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(cols):
        draw.text((side_w + c * (cell + 6), 4), name[:24], fill="black", font=font)
    for r, it in enumerate(items):
        y = head_h + r * (cell + label_h + 6)
        words = f"[{it.category or '-'}] {it.instruction}"
        for k, line in enumerate(_wrap(words, 26)[:6]):
            draw.text((4, y + k * 12), line, fill="black", font=font)
        images = [it.load_image()] + ([it.load_target()] if has_target else [])
        labels = [""] * len(images)
        for s in systems:
            p = outputs.get((s, it.item_id))
            images.append(
                load_image(p, name=f"the output of {s!r} for {it.item_id!r}") if p else None
            )
            labels.append(verdict_text(verdicts, s, it.item_id)[0])
        for c, (img, label) in enumerate(zip(images, labels)):
            x = side_w + c * (cell + 6)
            if img is None:
                draw.rectangle([x, y, x + cell, y + cell], fill="#eeeeee")
                draw.text((x + 4, y + cell // 2), "no output", fill="#aa0000", font=font)
            else:
                resample = (
                    Image.Resampling.NEAREST if max(img.size) < cell else Image.Resampling.LANCZOS
                )
                sheet.paste(img.resize((cell, cell), resample), (x, y))
            for k, line in enumerate(_wrap(label.replace(" · ", "  "), 24)[:2]):
                colour = "#aa0000" if label.startswith("failed") else "black"
                draw.text((x, y + cell + 2 + 12 * k), line, fill=colour, font=font)
    path = Path(path)
    sheet.save(path)
    return path


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    return lines or [""] * int(math.ceil(len(text) / max(width, 1)))
