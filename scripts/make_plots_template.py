#!/usr/bin/env python
"""Write ``cosyml/project/dvc_plots_offline.html``: DVC's plots page template with vega inlined.

``dvc plots show`` writes a page whose vega renderer loads vega, vega-lite and vega-embed from a CDN, so on
a machine without internet the page is blank. DVC takes a custom page template (``plots.html_template``);
this one carries the three libraries inline (the same versions DVC's page names) and has no ``{scripts}``
placeholder, so nothing is fetched. Run once by hand; the output is committed:

    npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2      # in an empty folder
    python scripts/make_plots_template.py FOLDER
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "cosyml" / "project" / "dvc_plots_offline.html"
PACKAGES = (  # (tarball, minified UMD build inside it): vega-embed needs the globals of the other two
    ("vega-5.20.2.tgz", "package/build/vega.min.js"),
    ("vega-lite-5.2.0.tgz", "package/build/vega-lite.min.js"),
    ("vega-embed-6.18.2.tgz", "package/build/vega-embed.min.js"),
)


def main(folder: Path) -> None:
    licenses, scripts = [], []
    for tarball, member in PACKAGES:
        with tarfile.open(folder / tarball) as archive:
            source = archive.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
            license_text = archive.extractfile("package/LICENSE").read().decode("utf-8")  # type: ignore[union-attr]
        if "</script" in source or "{plot_divs}" in source or "{refresh_tag}" in source:
            raise SystemExit(f"{tarball}: {member} cannot be inlined (contains a closing tag or a DVC placeholder)")
        licenses.append(f"{tarball.removesuffix('.tgz')} ({member}):\n{license_text.strip()}")
        scripts.append(f'<script type="text/javascript">\n{source.strip()}\n</script>')
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            "<!-- DVC plots page for machines without internet, written by cosyml's scripts/make_plots_template.py.",
            "The inlined libraries keep their licenses:",
            "",
            "\n\n".join(licenses).replace("--", "- -"),
            "-->",
            "<html>",
            "<head>",
            "    {refresh_tag}",
            '    <meta charset="utf-8">',
            "    <title>DVC Plot</title>",
            *scripts,
            "    <style>table { border-spacing: 15px; }</style>",
            "</head>",
            "<body>",
            "    {plot_divs}",
            "</body>",
            "</html>",
            "",
        ]
    )
    OUT.write_text(page, encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
