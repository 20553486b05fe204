"""The published pages work offline, in a real browser: headless Chromium (tests/chromium.py)
on pages served from localhost, with the network closed.

- The asv dashboard, published by benchmarks/publish.py from a small ``asv run``: the
  summary grid and one benchmark's graph render with their data points, every library
  loads from the dashboard's own copies (benchmarks/vendor/) and no request fails.
- The documentation site (mkdocs): every formula of the user guide renders as math with
  the vendored MathJax (docs/javascripts/mathjax/), none is left as raw ``\\(...\\)``.

Chromium is a system package (Debian: ``apt-get install chromium``), which ``.ci/run``
installs.  Without it these tests fail, not skip: the pages must be checked in CI.
"""

import contextlib
import functools
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from chromium import Browser, find_chromium

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
#: A benchmark that compiles nothing (the learning-rate schedules are Python), with four
#: parameter values: four series on its graph.
BENCHMARK = "kernels.Schedule.time_rate"
#: Material for MkDocs asks GitHub's API for the repository's stars and version, to show
#: them next to the repository link; offline the link stays and the numbers are missing.
#: That is the one request of the documentation pages that may fail.
OPTIONAL_REQUESTS = ("https://api.github.com/",)


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        pytest.fail("Chromium is not installed. CI installs it (.ci/run: apt-get install -y "
                    "chromium); on Debian or Ubuntu: sudo apt-get install chromium")
    with Browser(binary, width=1280, height=800) as browser:
        yield browser


@contextlib.contextmanager
def serve(directory):
    """A static web server for ``directory`` on a free localhost port; yields its URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def _run(args, cwd, timeout=900, env=None):
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, f"{args}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """The published dashboard of :data:`BENCHMARK` measured on two commits, the previous
    one and this checkout, in a directory of its own (a copy of benchmarks/asv.conf.json
    with absolute paths): two commits draw a line on the summary grid.

    Both runs use this interpreter (``--python=same``); the previous commit's ``src/`` and
    ``benchmarks/`` come from ``git archive`` and go first on the benchmarks' path
    (``ASV_PYTHONPATH``), so its own code is what is measured.
    """
    asv = shutil.which("asv", path=os.path.dirname(sys.executable)) or shutil.which("asv")
    assert asv, "asv is part of the test extra: pip install '.[test]'"
    from asv.util import load_json

    work = tmp_path_factory.mktemp("asv")
    history = subprocess.run(["git", "rev-parse", "HEAD~1", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert history.returncode == 0, ("the dashboard test measures this commit and its parent: "
                                     f"it needs a clone with history\n{history.stderr}")
    commits = history.stdout.split()
    previous = work / "previous"
    previous.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", commits[0], "src", "benchmarks"],
                             cwd=ROOT, capture_output=True, timeout=120, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(previous, filter="data")
    conf = load_json(str(BENCHMARKS / "asv.conf.json"), js_comments=True)
    # The graphs follow branches' histories: this one's, whatever branch (or detached
    # HEAD) the checkout is on.
    conf.update(repo=str(ROOT), branches=["HEAD"], env_dir=str(work / "env"),
                results_dir=str(work / "results"), html_dir=str(work / "html"))
    config = work / "asv.conf.json"
    # asv keeps the machine's description in ~/.asv-machine.json, which test_benchmarks'
    # asv run (in another pytest worker, maybe at the same moment) writes too: this one's
    # is in a home of its own.
    home = work / "home"
    home.mkdir()
    _run([asv, "machine", "--yes", "--machine", "pytest"], BENCHMARKS,
         env=dict(os.environ, HOME=str(home)))
    for commit, tree in [(commits[0], previous), (commits[1], ROOT)]:
        benchmark_dir = str(tree / "benchmarks" / "benchmarks")
        config.write_text(json.dumps(dict(conf, benchmark_dir=benchmark_dir)))
        env = dict(os.environ, ASV_PYTHONPATH=str(tree / "src"), HOME=str(home))
        output = _run([asv, "run", "--python=same", "--quick", "--machine", "pytest",
                       "--set-commit-hash", commit, "--config", str(config),
                       "--bench", re.escape(BENCHMARK)], work, env=env)
        assert BENCHMARK in output and "failed" not in output.lower(), output[-3000:]
    # The dashboard lists every benchmark asv discovered and asks for each one's graph: a
    # run of one benchmark would leave the others' requests unanswered (404), which a run
    # of the whole suite does not.  So the listing keeps the benchmark that ran.
    listing = work / "results" / "benchmarks.json"
    benchmarks = json.loads(listing.read_text())
    listing.write_text(json.dumps({name: value for name, value in benchmarks.items()
                                   if name in (BENCHMARK, "version")}))
    published = subprocess.run([sys.executable, str(BENCHMARKS / "publish.py"), "--config",
                                str(config)], cwd=work, capture_output=True, text=True,
                               timeout=600)
    assert published.returncode == 0, published.stdout + published.stderr
    assert "CDN references" in published.stdout
    return work / "html"


#: How many pixels of a canvas region have a series' colour (within a small distance).
COLOURED_PIXELS = """
window.colouredPixels = (canvas, colour, left, top, width, height) => {
  const probe = document.createElement('canvas').getContext('2d');
  probe.fillStyle = colour;
  probe.fillRect(0, 0, 1, 1);
  const [r, g, b] = probe.getImageData(0, 0, 1, 1).data;
  const ratio = canvas.width / canvas.clientWidth;
  const data = canvas.getContext('2d').getImageData(
    Math.round(left * ratio), Math.round(top * ratio),
    Math.max(1, Math.round(width * ratio)), Math.max(1, Math.round(height * ratio))).data;
  let count = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b) < 60)
      count++;
  }
  return count;
};
true
"""


def test_published_pages_load_nothing_from_the_network(dashboard):
    pages = sorted(dashboard.rglob("*.html"))
    assert pages
    for page in pages:
        tags = re.findall(r"<(?:script|link)\b[^>]*>", page.read_text(encoding="utf-8"))
        remote = [tag for tag in tags if re.search(r'(src|href)="(https?:)?//', tag)]
        assert not remote, (page.name, remote)
    assert (dashboard / "vendor" / "jquery-3.3.1" / "jquery.min.js").is_file()
    assert (dashboard / "vendor" / "jquery-3.3.1" / "LICENSE.txt").is_file()


def test_dashboard_renders_offline_in_chromium(browser, dashboard, tmp_path):
    with serve(dashboard) as url:
        browser.open(url + "index.html")
        browser.evaluate(COLOURED_PIXELS)
        # The summary grid: the benchmark's small plot, drawn by flot from both commits,
        # its line on the canvas in the series' colour.
        summary = browser.wait_until(
            "(() => { const e = $('.benchmark-plot').filter((i, e) => $(e).data('plot'));"
            "  if (!e.length) return null;"
            "  const p = e.first().data('plot'), c = e.first().find('canvas.flot-base')[0];"
            "  return p.getData().map(s => [s.data.length, "
            "    colouredPixels(c, s.color, 0, 0, c.clientWidth, c.clientHeight)]); })()",
            "the summary grid's plot")
        assert summary and all(points == 2 and pixels >= 20 for points, pixels in summary), summary
        names = browser.evaluate("$('.benchmark-container .benchmark-text').map("
                                 "(i, e) => $(e).text()).get()")
        assert names == ["Schedule.time_rate"], names
        browser.screenshot(tmp_path / "summary.png")
        # One benchmark's graph: a series per schedule, each with a point per commit drawn
        # where flot puts it.  The schedules' timings are measured, so two series' points
        # can coincide, the later one drawn over the other: each series is drawn alone on
        # the page's axes to be looked at, then the graph is drawn whole again.
        browser.evaluate(f"location.hash = {json.dumps(BENCHMARK)}")
        series = browser.wait_until(
            "(() => { const p = $('#main-graph').data('plot');"
            "  if (!p || !p.getData().length) return null;"
            "  const c = $('#main-graph canvas.flot-base')[0], all = p.getData();"
            "  const whole = all.map(s => ({data: s.data, color: s.color, label: s.label,"
            "    lines: s.lines, points: s.points}));"
            "  const seen = whole.map(s => { p.setData([s]); p.draw();"
            "    return [s.label, s.data.map(([x, y]) => {"
            "      const o = p.pointOffset({x: x, y: y});"
            "      return colouredPixels(c, s.color, o.left - 5, o.top - 5, 11, 11); })]; });"
            "  p.setData(whole); p.draw();"
            "  return seen; })()",
            "the benchmark's graph")
        assert len(series) == 4, series  # step, exponential, cosine, plateau
        for label, pixels in series:
            # Each point is a circle of radius 3 in the series' colour.
            assert len(pixels) == 2 and all(count >= 5 for count in pixels), (label, pixels)
        browser.settle(0.5)
        text = browser.evaluate("document.body.innerText")
        assert "continental origin of swallow" not in text  # asv's "a library failed" message
        assert browser.failed_requests() == []
        assert browser.console_errors() == []
        requested = {e["params"]["request"]["url"] for e in browser.events
                     if e["method"] == "Network.requestWillBeSent"}
        assert not [u for u in requested if not u.startswith((url, "data:"))], requested
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site_dir = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--site-dir", str(site_dir)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return site_dir


def test_user_guide_formulas_render_offline_in_chromium(browser, site):
    with serve(site) as url:
        browser.open(url + "user-guide/")
        rendered = browser.wait_until(
            "window.MathJax && MathJax.startup && MathJax.startup.promise.then("
            "  () => document.querySelectorAll('mjx-container').length)", "MathJax")
        marked = browser.evaluate("document.querySelectorAll('.arithmatex').length")
        assert marked > 100  # 151 today: every formula of the user guide
        # Each formula that arithmatex marked is MathJax output now, and none is an error.
        assert browser.evaluate("document.querySelectorAll('.arithmatex mjx-container').length") \
            == rendered == marked
        assert browser.evaluate("document.querySelectorAll('mjx-merror').length") == 0
        text = browser.evaluate("document.body.innerText")
        assert "\\(" not in text and "\\[" not in text
        browser.settle(0.5)
        failed = [(u, why) for u, why in browser.failed_requests()
                  if not u.startswith(OPTIONAL_REQUESTS)]
        assert failed == []
        requested = {e["params"]["request"]["url"] for e in browser.events
                     if e["method"] == "Network.requestWillBeSent"}
        assert any("/javascripts/mathjax/tex-chtml.js" in u for u in requested)
        assert any(u.endswith(".woff") for u in requested)  # its fonts, from the site too
        assert not [u for u in requested
                    if not u.startswith((url, "data:") + OPTIONAL_REQUESTS)], requested
