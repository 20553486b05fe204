"""The asv suite works: every benchmark runs for every parameter, and asv runs and publishes.

Timings are not looked at: speed is measured with asv and the comparison harness on a
quiet machine, never asserted in pytest.

Every benchmark method is called here once per parameter combination, in this process, as
asv's ``setup``, method, ``teardown`` sequence would call it.  That is what can break when a
kernel or the API changes, and in one process it costs the benchmarks' own work only: asv's
quick pass starts a fresh interpreter per benchmark and took 435 s of a 14-minute suite.
asv itself then runs the start-up benchmarks (``timeraw``: a fresh interpreter per sample,
which only asv does; the cold-cache one compiles a first step from nothing) and one training
benchmark, and publishes.
"""

import inspect
import itertools
import os
import shutil
import subprocess
import sys

import numba
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)

from benchmarks import common, kernels, large_data, startup, training  # noqa: E402  (benchmarks/benchmarks/)

METHOD_PREFIXES = ("time_", "track_", "mem_", "peakmem_")


def _parameter_sets(cls):
    params = getattr(cls, "params", None)
    if not params:
        return [()]
    if not isinstance(params, tuple):  # asv: a single list is one parameter
        params = (params,)
    return list(itertools.product(*params))


def _cases():
    for module in (kernels, training, startup, large_data):
        for name, cls in sorted(vars(module).items()):
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            methods = sorted(m for m in dir(cls) if m.startswith(METHOD_PREFIXES))
            if not methods:
                continue
            for values in _parameter_sets(cls):
                label = f"{module.__name__.split('.')[-1]}.{name}({', '.join(map(str, values))})"
                yield pytest.param(cls, methods, values, id=label)


@pytest.mark.parametrize("cls, methods, values", list(_cases()))
def test_every_benchmark_runs_for_every_parameter(cls, methods, values, monkeypatch):
    # Each track_ method times its code once instead of keeping the fastest of 3, on two
    # batches of data instead of up to 64: the same code runs, and the large network's
    # epochs were most of this file's time.
    monkeypatch.setattr(common, "REPEATS", 1)
    monkeypatch.setattr(common, "MAX_BATCHES", 2)
    if "threads" in getattr(cls, "param_names", ()) and \
            values[cls.param_names.index("threads")] > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("more threads than numba has here: asv skips it too (setup raises)")
    # One setup for all of a class's methods (asv repeats it per method): the methods only
    # read what setup built, and the large network's setup is itself an epoch of training.
    bench = cls()
    if hasattr(bench, "setup"):
        bench.setup(*values)
    try:
        for method in methods:
            result = getattr(bench, method)(*values)
            if method.startswith("track_"):
                assert isinstance(result, (int, float)) and result == result, (method, result)
    finally:
        if hasattr(bench, "teardown"):
            bench.teardown(*values)


def _asv(*args, timeout=1800):
    asv = shutil.which("asv", path=os.path.dirname(sys.executable)) or shutil.which("asv")
    assert asv, "asv is part of the test extra: pip install '.[test]'"
    return subprocess.run([asv, *args], cwd=BENCHMARKS, capture_output=True, text=True, timeout=timeout)


def test_asv_runs_and_publishes(tmp_path):
    machine = _asv("machine", "--yes", "--machine", "pytest")
    assert machine.returncode == 0, machine.stderr
    run = _asv("run", "--python=same", "--quick", "--machine", "pytest", "--show-stderr",
               "--set-commit-hash", _head(),
               "--bench", r"startup\.StartUp\.|training\.TrainStep\.time_train_step")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    assert "failed" not in output.lower(), output[-5000:]
    assert "startup.StartUp.timeraw_import_only" in output
    assert "training.TrainStep.time_train_step" in output
    # benchmarks/publish.py: asv publish, then the pages load the vendored libraries
    # (tests/test_web.py opens such a dashboard in Chromium).
    published = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "publish.py")],
                               capture_output=True, text=True, timeout=600)
    assert published.returncode == 0, published.stdout + published.stderr
    with open(os.path.join(BENCHMARKS, ".asv", "html", "index.html"), encoding="utf-8") as f:
        index = f.read()
    assert 'src="vendor/jquery-3.3.1/jquery.min.js"' in index
    assert "cdn" not in index.lower() and "code.jquery.com" not in index


def _head():
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=BENCHMARKS, capture_output=True, text=True)
    assert out.returncode == 0, "the asv test runs from a git checkout"
    return out.stdout.strip()


def test_publish_script_rewrites_pages_and_refuses_what_it_cannot_vendor(tmp_path):
    import publish  # benchmarks/publish.py

    entries = publish.load_manifest()
    jquery = next(e for e in entries if e["file"].startswith("jquery-"))
    html = tmp_path / "html"
    (html / "sub").mkdir(parents=True)
    page = ('<html><head><script src="{url}" integrity="{sri}" crossorigin="anonymous" '
            'onerror="js_load_failure()"></script>\n<link rel="stylesheet" href="{css}">'
            '<link href="asv.css" rel="stylesheet"></head><body>'
            '<a href="https://github.com/airspeed-velocity/asv/">asv</a></body></html>')
    css = next(e for e in entries if e["file"].endswith(".css"))["url"]
    sri = "sha256-FgpCb/KJQlLNfOu91ta32o/NMZxltwRo8QtmkMRdAu8="  # as asv's index.html has it
    (html / "index.html").write_text(page.format(url=jquery["url"], sri=sri, css=css))
    (html / "sub" / "page.html").write_text(page.format(url=jquery["url"], sri=sri, css=css))
    assert publish.main(["--no-publish", "--html-dir", str(html)]) is None
    index = (html / "index.html").read_text()
    assert f'<script src="vendor/{jquery["file"]}" onerror="js_load_failure()"></script>' in index
    assert "integrity" not in index and "crossorigin" not in index
    assert 'href="asv.css"' in index and 'href="https://github.com/airspeed-velocity/asv/"' in index
    assert f'src="../vendor/{jquery["file"]}"' in (html / "sub" / "page.html").read_text()
    assert (html / "vendor" / jquery["file"]).read_bytes() == \
        open(os.path.join(BENCHMARKS, "vendor", jquery["file"]), "rb").read()
    # A URL that vendor.json does not provide, or an integrity hash the copy does not
    # match, is an error that names it.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "a.html").write_text(page.format(url=jquery["url"], sri=sri, css=css))
    (fresh / "b.html").write_text(page.format(url="https://cdn.example/x.js", sri=sri, css=css))
    with pytest.raises(publish.PublishError, match=r"b\.html loads https://cdn\.example/x\.js"):
        publish.make_self_contained(str(fresh))
    # Refused before anything was written: a.html still as published.
    assert jquery["url"] in (fresh / "a.html").read_text() and not (fresh / "vendor").exists()
    (html / "index.html").write_text(page.format(url=jquery["url"], sri="sha256-AAAA", css=css))
    with pytest.raises(publish.PublishError, match="integrity"):
        publish.make_self_contained(str(html))
    # A vendored file that is not the one recorded is refused before any page changes.
    vendor = tmp_path / "vendor"
    shutil.copytree(os.path.join(BENCHMARKS, "vendor"), vendor)
    with open(vendor / jquery["file"], "ab") as f:
        f.write(b"\n")
    with pytest.raises(publish.PublishError, match="sha256"):
        publish.load_manifest(str(vendor))
