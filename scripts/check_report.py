#!/usr/bin/env python3
"""Check an HTML report's layout in headless chromium, and optionally save a full-page screenshot.

    python scripts/check_report.py out/report.html [--screenshot out/report.png] [--widths 1280 480]

No browser-automation package: a copy of the page gets a small script that measures the layout
after the page has loaded and writes the findings into the DOM; `chromium --headless --dump-dom`
prints that DOM. Checked at each window width:
- the page does not scroll sideways: document.scrollingElement.scrollWidth <= innerWidth;
- no table, table box, figure or image reaches past its parent, unless the parent scrolls
  sideways by itself (a wide table inside its own scrolling box is fine);
- every image has loaded (natural width > 0);
- no two figures / table boxes overlap (their bounding rectangles do not intersect).
The screenshot is taken at the first width with the window as tall as the page (full page).
Exit status 0 when every check passes, 1 with one sentence per failure otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MEASURE = r"""
<script>
window.addEventListener("load", () => {
  const problems = [];
  const describe = (el) => el.tagName.toLowerCase() + (el.className ? "." + el.className : "") +
    (el.querySelector && el.querySelector("caption,figcaption") ?
     ' "' + el.querySelector("caption,figcaption").textContent.slice(0, 60) + '"' : "");
  const root = document.scrollingElement;
  if (root.scrollWidth > window.innerWidth) {
    problems.push(`the page is ${root.scrollWidth} px wide, wider than the window (${window.innerWidth} px)`);
  }
  for (const el of document.querySelectorAll("table, .table-box, figure, img")) {
    const parent = el.parentElement;
    const overflowX = getComputedStyle(parent).overflowX;
    if (overflowX === "auto" || overflowX === "scroll") continue;
    const r = el.getBoundingClientRect(), p = parent.getBoundingClientRect();
    if (r.width > p.width + 1 || r.right > p.right + 1 || r.left < p.left - 1) {
      problems.push(`${describe(el)} is ${Math.round(r.width)} px wide, wider than the window's room for it ` +
                    `(its container ${describe(parent)} is ${Math.round(p.width)} px)`);
    }
  }
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0) problems.push(`an image (${img.alt}) did not load`);
  }
  const blocks = [...document.querySelectorAll("figure, .table-box, table:not(.table-box table)")];
  const rects = blocks.map((el) => el.getBoundingClientRect());
  for (let i = 0; i < blocks.length; i++) {
    for (let j = i + 1; j < blocks.length; j++) {
      const a = rects[i], b = rects[j];
      const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (w > 0.5 && h > 0.5) problems.push(`${describe(blocks[i])} and ${describe(blocks[j])} overlap`);
    }
  }
  const out = document.createElement("pre");
  out.id = "layout-check-result";
  out.style.display = "none";
  out.textContent = JSON.stringify({problems, width: window.innerWidth,
                                    height: Math.ceil(root.scrollHeight), blocks: blocks.length});
  document.body.appendChild(out);
});
</script>
"""
RESULT = re.compile(r'<pre id="layout-check-result"[^>]*>(.*?)</pre>', re.S)
MAX_SCREENSHOT_HEIGHT = 30000


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("check_report: chromium is not installed; install it (e.g. `apt-get install -y chromium`)")


def chromium_args(browser: str, width: int, height: int) -> list[str]:
    args = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-extensions", "--allow-file-access-from-files", f"--window-size={width},{height}",
            "--virtual-time-budget=10000"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # chromium refuses to run as root with its sandbox
    return args


def measure(browser: str, page: Path, width: int, profile: Path) -> dict:
    """Load the instrumented page at a window width; the measuring script's findings."""
    done = subprocess.run(chromium_args(browser, width, 900) + [f"--user-data-dir={profile}", "--dump-dom",
                                                                  page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = RESULT.search(done.stdout)
    if not found:
        raise SystemExit(f"check_report: chromium did not run the layout check on {page} "
                         f"(exit {done.returncode}): {done.stderr.strip()[-500:]}")
    import html

    return json.loads(html.unescape(found.group(1)))


def screenshot(browser: str, report: Path, out: Path, width: int, height: int, profile: Path) -> None:
    """A screenshot of the whole page (the window as tall as the page)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    height = min(max(height, 200), MAX_SCREENSHOT_HEIGHT)
    done = subprocess.run(chromium_args(browser, width, height) + [f"--user-data-dir={profile}",
                                                                     f"--screenshot={out.resolve()}", report.as_uri()],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(f"check_report: chromium could not take a screenshot of {report}: {done.stderr.strip()[-500:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check an HTML report's layout in headless chromium.")
    parser.add_argument("report", type=Path, help="the report's .html file")
    parser.add_argument("--screenshot", type=Path, help="write a full-page PNG screenshot here")
    parser.add_argument("--widths", type=int, nargs="+", default=[1280, 480],
                        help="window widths in px to check at (default: %(default)s); the screenshot uses the first")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"check_report: {args.report} does not exist; give the report's .html file", file=sys.stderr)
        return 2
    browser = find_chromium()
    report = args.report.resolve()
    text = report.read_text(encoding="utf-8")
    failures, height = [], 900
    with tempfile.TemporaryDirectory(prefix="check-report-") as tmp:
        tmp = Path(tmp)
        page = tmp / "page.html"
        page.write_text(text.replace("</body>", MEASURE + "</body>", 1) if "</body>" in text else text + MEASURE,
                        encoding="utf-8")
        for k, width in enumerate(args.widths):
            found = measure(browser, page, width, tmp / f"profile-{k}")
            if k == 0:
                height = found["height"]
            failures += [f"at {width} px: {p}" for p in found["problems"]]
        if args.screenshot:
            screenshot(browser, report, args.screenshot, args.widths[0], height, tmp / "profile-shot")
    if failures:
        for failure in failures:
            print(f"{report.name}: {failure}.")
        return 1
    print(f"{report.name}: layout checks passed at widths {', '.join(map(str, args.widths))} px"
          + (f"; screenshot {args.screenshot} ({args.widths[0]}x{min(height, MAX_SCREENSHOT_HEIGHT)})"
             if args.screenshot else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
