"""The screenshot in docs/report.md: the report of the committed example tables, taken by headless Chromium
with a point hovered, saved as a palette PNG (small enough to commit).

    python benchmarks/report_screenshot.py                  # -> docs/img/report.png
    python benchmarks/report_screenshot.py --out /tmp/report.png --method random
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from vidprune.report.browser import headless_chromium, open_report, severe_console_messages, unavailable_reason
from vidprune.report.html import write_report

REPO = Path(__file__).resolve().parents[1]
TABLES = [str(REPO / "results/examples/*.csv"), str(REPO / "results/demo/*.csv")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs/img/report.png")
    parser.add_argument("--group", type=int, default=1, help="which configuration to show (0-based)")
    parser.add_argument("--method", default="evad", help="hover a point of this method")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"cannot take the screenshot: {reason}")
        return 1
    from selenium.webdriver.common.action_chains import ActionChains

    page = write_report(TABLES, Path(tempfile.mkdtemp()) / "report.html", title="vidprune report: examples and demo")
    with headless_chromium(width=args.width, height=args.height) as driver:
        open_report(driver, page)
        section = driver.find_elements("css selector", "section.group")[args.group]
        for _ in range(3):  # tables laid out on scrolling (content-visibility) move the page: settle first
            driver.execute_script("window.scrollBy(0, arguments[0].getBoundingClientRect().top - 8)", section)
            time.sleep(0.3)
        div, dx, dy = driver.execute_script("""
            const div = arguments[0].querySelector('.plot.pareto');
            const trace = div.data.findIndex(t => t.name === arguments[1]);
            const points = div.querySelectorAll('.scatterlayer .trace')[trace].querySelectorAll('path.point');
            const p = points[Math.floor(points.length / 2)].getBoundingClientRect(), d = div.getBoundingClientRect();
            return [div, p.x + p.width / 2 - (d.x + d.width / 2), p.y + p.height / 2 - (d.y + d.height / 2)];
        """, section, args.method)
        # an offset from the plot (in view) rather than the marker itself, which selenium would scroll to
        ActionChains(driver).move_to_element_with_offset(div, int(dx), int(dy)).perform()
        time.sleep(0.5)
        errors = severe_console_messages(driver)
        png = driver.get_screenshot_as_png()
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, optimize=True)
    print(f"{args.out}: {image.width}x{image.height}, {args.out.stat().st_size / 1024:.0f} KiB"
          + (f"; console errors: {errors}" if errors else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
