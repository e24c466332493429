"""report.html: well-formed, self-contained HTML5, and rendered in a real headless Chromium."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import os
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mpsearch.report import FIGURES, available_figures, render_html
from mpsearch.report.html_report import inline, png_size

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictParser(HTMLParser):
    """Records elements and checks every non-void element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.doctype: str | None = None

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _parse(page: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(page)
    parser.close()
    return parser


def test_html_is_well_formed_and_self_contained(full_report):
    summary, paths = full_report
    page = paths["report_html"].read_text(encoding="utf-8")
    parser = _parse(page)
    assert parser.doctype == "DOCTYPE html" and page.startswith("<!DOCTYPE html>\n<html lang=\"en\">")
    assert not parser.errors and not parser.stack
    tags = [t for t, _ in parser.elements]
    assert tags[:2] == ["html", "head"] and tags.count("body") == 1 and tags.count("title") == 1
    assert ("meta", {"charset": "utf-8"}) in parser.elements
    ids = [a["id"] for _, a in parser.elements if "id" in a]
    assert len(ids) == len(set(ids))

    # Nothing is loaded from anywhere: only data: images and in-page links, and a policy that enforces it.
    assert not re.search(r"https?://|url\(|<script|<link", page)
    for tag, attrs in parser.elements:
        for name in ("src", "href"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith("data:image/png;base64,") or value[1:] in ids, (tag, value[:40])
    csp = [a["content"] for t, a in parser.elements if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp == ["default-src 'none'; img-src data:; style-src 'unsafe-inline'"]

    # Every plot file is embedded exactly, with its true size, in the order the report lists them.
    imgs = [a for t, a in parser.elements if t == "img"]
    assert [a["data-file"] for a in imgs] == list(FIGURES)
    for attrs in imgs:
        data = base64.b64decode(attrs["src"].split(",", 1)[1])
        assert data == (summary.run_dir / attrs["data-file"]).read_bytes()
        assert (int(attrs["width"]), int(attrs["height"])) == png_size(data)
        assert attrs["alt"]

    # Tables carry the numbers; headings and the markdown report agree.
    assert '<td>hutchinson</td><td class="r">+0.943</td>' in page
    assert "<td>ilp-1.5ms</td>" in page and "<h2>Exact-ILP picks</h2>" in page
    md_headings = re.findall(r"^## (.+)$", paths["report_md"].read_text(), re.M)
    assert re.findall(r"<h2>(.+?)</h2>", page) == [html.escape(h) for h in md_headings]


def test_html_says_when_sections_have_no_data(summary, _tiny_png):
    images = {name: _tiny_png for name in available_figures(summary)}
    page = render_html(summary, images)
    assert not _parse(page).errors
    assert "<p>No sensitivity signals were recorded for this run.</p>" in page
    assert "<p>No search fronts were stored for this run.</p>" in page
    assert page.count("<img ") == len(images) == 4  # pareto, memory, bits, prediction


def test_inline_markup_is_escaped():
    assert inline("**model**: a<b> & *c* `x<y>`") == (
        "<strong>model</strong>: a&lt;b&gt; &amp; <em>c</em> <code>x&lt;y&gt;</code>")
    assert inline("2*3*4 and a * b") == "2*3*4 and a * b"  # not emphasis


def _chromium() -> str | None:
    if shutil.which("chromium") or os.environ.get("MPSEARCH_TEST_PATH_ONLY"):  # .ci/run: tools hidden from PATH
        return shutil.which("chromium")
    return str(Path("/usr/bin/chromium")) if Path("/usr/bin/chromium").exists() else None


FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]

# Injected at the top of <head> in a copy of the page: records errors of any kind, then on load, each
# image's decoded size, into a <pre id="probe"> that --dump-dom prints.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push('error: ' + (e.message || (e.target && (e.target.src || e.target.href)) || '?'));
}, true);
document.addEventListener('securitypolicyviolation', function (e) {
  window.__errors.push('CSP ' + e.violatedDirective + ' ' + e.blockedURI);
});
(function () {
  var original = console.error;
  console.error = function () {
    window.__errors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
    original.apply(console, arguments);
  };
})();
window.addEventListener('load', function () {
  var images = [].map.call(document.images, function (i) {
    return {file: i.dataset.file, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight};
  });
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify({images: images, errors: window.__errors});
  document.body.appendChild(pre);
});
</script>"""


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(_chromium() is None, reason="Debian chromium is not installed (.ci/run installs it: "
                    "apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(full_report, tmp_path):
    summary, paths = full_report
    start = time.perf_counter()
    page = paths["report_html"].read_text(encoding="utf-8")
    assert page.count("default-src 'none';") == 1
    probed = page.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';", 1)
    probed = probed.replace('<meta charset="utf-8">', '<meta charset="utf-8">\n' + PROBE, 1)
    probe_file = tmp_path / "probe.html"
    probe_file.write_text(probed, encoding="utf-8")

    proc = _run(["--enable-logging=stderr", "--v=0", "--dump-dom", probe_file.as_uri()], tmp_path / "profile-1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert match, "the page's load handler never ran: " + proc.stdout[-500:]
    probe = json.loads(html.unescape(match.group(1)))
    assert probe["errors"] == []
    # The browser logs every console message (errors, CSP violations, failed loads) on stderr.
    assert [line for line in proc.stderr.splitlines() if ":CONSOLE" in line] == []
    images = {i["file"]: i for i in probe["images"]}
    assert list(images) == list(FIGURES)
    for name, info in images.items():
        expected = png_size((summary.run_dir / name).read_bytes())
        assert info["complete"] and (info["width"], info["height"]) == expected, name

    shot = tmp_path / "shot.png"
    proc = _run(["--window-size=1280,2000", f"--screenshot={shot}", paths["report_html"].as_uri()],
                tmp_path / "profile-2")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    from PIL import Image

    with Image.open(io.BytesIO(shot.read_bytes())) as img:
        assert img.format == "PNG" and img.size == (1280, 2000)
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
    # A blank or error page has a handful of colours; the report has text, tables and plots.
    assert len(colors) > 200
    assert max(count for count, _ in colors) < 0.9 * 1280 * 2000
    assert time.perf_counter() - start < 30
