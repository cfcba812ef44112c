"""The report page in a real browser: headless Chromium renders a really trained tiny run's report;
the test reads what the page shows (run name, eval numbers) and asks the browser whether every image
decoded. Skipped, with the reason, where no Chromium is installed (Debian: apt-get install chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ratlip_cli.cli import app

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install chromium)"),
    pytest.mark.usefixtures("one_thread"),
]

# Appended to a copy of the page (the report itself has no script): the browser writes what it
# rendered into the DOM, which --dump-dom prints after the images have loaded.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight, ok: i.complete}));
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({title: document.title, name: document.getElementById('run-name').innerText,
    text: document.body.innerText, images: imgs});
  document.body.appendChild(out);
});
</script>"""


def render(page: Path, tmp_path: Path) -> dict:
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, flags=re.S)
    assert match, f"no probe output; chromium said: {proc.stderr[-2000:]}"
    return json.loads(unescape(match.group(1)))


def test_chromium_shows_the_report_of_a_trained_run(tmp_path):
    runs, data = tmp_path / "runs", tmp_path / "data"
    sets = [f"train.runs_dir={runs}", f"data.root={data}", "train.name=browser-run", "train.max_steps=4"]
    result = CliRunner().invoke(app, ["train", "tiny", "--device", "cpu", *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    run = runs / "browser-run"
    result = CliRunner().invoke(app, ["eval", "--run", str(run), "--num", "16", "--device", "cpu", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.strip().splitlines()[-1])
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output

    shown = render(run / "report.html", tmp_path)
    assert shown["name"] == "browser-run" and shown["title"] == "ratlip report: browser-run"
    text = shown["text"]
    assert f"{row['fid']:.3f}" in text and f"{row['clip_score']:.2f}" in text and f"{row['r_precision']:.2f}" in text
    assert "NOT FID" in text and "Resolved config" in text and "preset: tiny" in text
    alts = [i["alt"] for i in shown["images"]]
    assert alts == ["training curves"] + [f"samples at step {s}" for s in (0, 2, 4)]
    for img in shown["images"]:
        assert img["ok"] and img["w"] > 0 and img["h"] > 0, img  # the browser decoded it
    # the 8-column grid of 32 px cells shown 4x (grid.DISPLAY_SIZE = 128 px; grid.render_grid, no padding)
    assert shown["images"][1]["w"] == 8 * 128
