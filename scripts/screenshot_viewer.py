"""A screenshot of a run's heatmap viewer (``index.html``) with headless Chromium, e.g. for the README:

    python scripts/screenshot_viewer.py out/latest/index.html docs/viewer.png

Needs Chromium (Debian/Ubuntu: ``apt install chromium``); says so and exits 2 where it is absent.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="the viewer, e.g. out/latest/index.html")
    parser.add_argument("png", type=Path, help="the screenshot to write")
    parser.add_argument("--size", default="1100,1400", help="window width,height in pixels")
    args = parser.parse_args(argv)
    browser = find_chromium()
    if browser is None:
        print(
            f"error: no Chromium found (looked for {', '.join(BROWSERS)}); install the chromium package",
            file=sys.stderr,
        )
        return 2
    if not args.page.is_file():
        print(f"error: {args.page}: no such page; train a run first (make train)", file=sys.stderr)
        return 2
    args.png.parent.mkdir(parents=True, exist_ok=True)
    command = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars"]
    command += [f"--window-size={args.size}", f"--screenshot={args.png.resolve()}", args.page.resolve().as_uri()]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
