"""`ratlip demo`: the drawing equals `ratlip sample`'s grid, bad input is refused in one line, and the
running page, driven in headless Chromium over the DevTools protocol, draws a grid from a typed prompt.

The browser test is skipped, with the reason, where no Chromium or no Gradio is installed. Set
RATLIP_DEMO_SCREENSHOT=PATH to keep the browser's screenshot of the page (docs/images/demo.png)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from ratlip_cli.cli import app
from ratlip_cli.demo import Drawer
from ratlip_cli.export import list_runs
from ratlip_cli.errors import RatlipError
from ratlip_cli.seeds import row_seeds

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a big red circle on a blue background"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    sets = [f"train.runs_dir={root / 'runs'}", f"data.root={root / 'data'}", "train.name=demo-run", "train.max_steps=2"]
    result = CliRunner().invoke(app, ["train", "tiny", "--device", "cpu", *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    return root / "runs" / "demo-run"


def test_the_demo_draws_the_grid_ratlip_sample_writes(trained, tmp_path):
    drawing = Drawer("cpu").draw(trained, f"  {PROMPT} ", 3, 4, "raw")
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(app, ["sample", PROMPT, "--run", str(trained), "--n", "4", "--seed", "3",
                                      "--generator", "raw", "--out", str(out)])
    assert result.exit_code == 0, result.output
    expected = Image.open(out).convert("RGB")
    assert drawing.grid.size == expected.size
    assert drawing.grid.convert("RGB").tobytes() == expected.tobytes()
    assert drawing.seeds == row_seeds(3, PROMPT, 4)
    # the printed command is the one just run (its words, in order)
    assert drawing.command == f"ratlip sample '{PROMPT}' --run {trained} --n 4 --seed 3 --generator raw"
    assert "demo-run: raw generator" in drawing.note
    # the EMA generator draws other pixels (a 2-step run's EMA has moved away from its raw weights less)
    assert Drawer("cpu").draw(trained, PROMPT, 3, 4, "ema").grid.tobytes() != drawing.grid.tobytes()


@pytest.mark.parametrize("prompt, seed, n, which, message", [
    ("   ", 0, 4, "ema", "type a prompt"),
    (PROMPT, 0, 0, "ema", "number of images must be 1..16"),
    (PROMPT, 0, 17, "ema", "number of images must be 1..16"),
    (PROMPT, -1, 4, "ema", "seed must be 0 or more"),
    (PROMPT, 0, 4, "best", "unknown generator 'best'"),
])
def test_the_demo_refuses_bad_input(trained, prompt, seed, n, which, message):
    with pytest.raises(RatlipError, match=re.escape(message)):
        Drawer("cpu").draw(trained, prompt, seed, n, which)


def test_demo_command_refuses_a_folder_without_runs(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no trained run with an export under"), result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["demo", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "run directory not found" in result.output


def test_list_runs_offers_only_runs_with_an_export(trained, tmp_path):
    runs = list_runs(trained.parent)
    assert runs == [trained]
    (trained.parent / "unfinished").mkdir(exist_ok=True)
    assert list_runs(trained.parent) == [trained]


# ------------------------------------------------------------------------- the page in Chromium


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Page:
    """One Chromium tab driven over the DevTools protocol (Runtime.evaluate, Page.captureScreenshot)."""

    def __init__(self, ws) -> None:
        self.ws, self.next_id = ws, 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=120))
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 120.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"the page never satisfied: {expression}\npage text: {self.js('document.body.innerText')}")


@pytest.fixture()
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    pytest.importorskip("websockets.sync.client", reason="the DevTools client needs websockets (the test extra)")
    port = _free_port()
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", f"--remote-debugging-port={port}", "--window-size=1280,1000",
         "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > end:
                    raise AssertionError("Chromium's DevTools endpoint never answered") from None
                time.sleep(0.25)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_chromium_draws_a_grid_from_a_typed_prompt(trained, browser, tmp_path):
    pytest.importorskip("gradio", reason='the demo is an extra: pip install -e ".[demo]"')
    from ratlip_cli.demo import build_app

    port = _free_port()
    demo = build_app([trained], device="cpu")
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        request = urllib.request.Request(f"http://127.0.0.1:{browser}/json/new?{url}", method="PUT")
        target = json.loads(urllib.request.urlopen(request, timeout=30).read())
        from websockets.sync.client import connect

        ws = connect(target["webSocketDebuggerUrl"], max_size=64 * 2**20).__enter__()
        page = Page(ws)
        page.wait_for("!!document.querySelector('#prompt textarea')")
        assert page.js("document.querySelector('#run input').value") == str(trained)  # the run offered
        page.js(f"""(() => {{
            const set = (el, v) => {{
                Object.getOwnPropertyDescriptor(Object.getPrototypeOf(el), 'value').set.call(el, v);
                el.dispatchEvent(new Event('input', {{bubbles: true}}));
                el.dispatchEvent(new Event('change', {{bubbles: true}}));
            }};
            set(document.querySelector('#prompt textarea'), {json.dumps(PROMPT)});
            set(document.querySelector('#seed input'), '5');
            set(document.querySelector('#n input[type=number]'), '3');
            document.querySelector('#n input[type=number]').dispatchEvent(new Event('blur'));
        }})()""")
        time.sleep(0.5)
        page.js("document.querySelector('#generate').click()")
        src = page.wait_for("(() => { const i = document.querySelector('#grid img');"
                            " return i && i.complete && i.naturalWidth > 0 ? i.src : null; })()")
        command = page.wait_for("(() => { const t = document.querySelector('#command textarea');"
                                " return t && t.value ? t.value : null; })()")
        seeds_text = page.js("document.querySelector('#seeds').innerText")
        if os.environ.get("RATLIP_DEMO_SCREENSHOT"):
            shot = page.call("Page.captureScreenshot", format="png")["data"]
            Path(os.environ["RATLIP_DEMO_SCREENSHOT"]).write_bytes(base64.b64decode(shot))
        ws.close()
        if src.startswith("data:"):
            data = base64.b64decode(src.split(",", 1)[1])
        else:  # the file the page displayed, fetched while the server runs
            with urllib.request.urlopen(src, timeout=30) as r:
                data = r.read()
    finally:
        demo.close()

    # what the page shows is what `ratlip sample` with the printed command writes
    assert command == f"ratlip sample '{PROMPT}' --run {trained} --n 3 --seed 5 --generator ema"
    for s in row_seeds(5, PROMPT, 3):
        assert str(s) in seeds_text.replace(",", "")
    shown = Image.open(io.BytesIO(data)).convert("RGB")
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(app, ["sample", PROMPT, "--run", str(trained), "--n", "3", "--seed", "5",
                                      "--generator", "ema", "--out", str(out)])
    assert result.exit_code == 0, result.output
    expected = Image.open(out).convert("RGB")
    assert shown.size == expected.size and shown.tobytes() == expected.tobytes()
