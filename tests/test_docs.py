"""The documentation site (mkdocs.yml, docs/) builds in strict mode and carries real content.

Strict mode turns every MkDocs warning into an error: a broken link or anchor, a page left
out of the navigation, a docstring parameter that is not in the signature.  The build reads
the docstrings with griffe (static analysis): it imports neither fastmlp nor numba, so it
takes a few seconds.
"""

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


NOT_INSTALLED = ("{} is not installed; the docs requirements are in the test extra: "
                 "pip install '.[test]' (or '.[docs]')")


def test_docs_tooling_is_installed():
    # Fails rather than skips: CI installs the test extra, so a missing tool is a bug there.
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "material",
                   "pymdownx"):
        assert importlib.util.find_spec(module) is not None, NOT_INSTALLED.format(module)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail(NOT_INSTALLED.format("mkdocs"))
    site_dir = tmp_path_factory.mktemp("site")
    # Material for MkDocs prints a banner about MkDocs 2.0 unless told not to.
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return site_dir


def page_text(site, page):
    """The page's HTML with tags dropped, entities decoded and whitespace collapsed."""
    raw = (site / page / "index.html").read_text(encoding="utf-8")
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", raw)).split())


def anchors(site, page):
    raw = (site / page / "index.html").read_text(encoding="utf-8")
    return set(re.findall(r'id="([^"]+)"', raw))


def test_api_reference_documents_the_public_api(site):
    from fastmlp import Sequential

    text = page_text(site, "api/fastmlp")
    # Sequential.fit's docstring, summary and a parameter description, as the page shows it.
    summary = Sequential.fit.__doc__.strip().splitlines()[0]
    assert summary in text
    assert "The last batch of an epoch is smaller when it does not divide" in text
    ids = anchors(site, "api/fastmlp")
    expected = ["Sequential", "Sequential.fit", "Sequential.predict", "History", "DivergenceError",
                "Dense", "Maxout", "SGD", "Adam", "AdamW", "load", "FormatError",
                "gradcheck.gradcheck", "random_search", "set_num_threads", "threads.threads",
                "get_num_threads", "set_reproducible", "reproducible", "get_reproducible",
                "Sequential.export", "Sequential.summary",
                "Sequential.count_params"]
    assert {f"fastmlp.{name}" for name in expected} <= ids
    assert "fastmlp.datasets.make_spiral" in anchors(site, "api/datasets")
    assert {"fastmlp.sklearn.MLPClassifier", "fastmlp.sklearn.MLPRegressor"} <= anchors(site, "api/sklearn")
    assert "fastmlp.distributed.fit_distributed" in anchors(site, "api/distributed")
    kernels = anchors(site, "api/kernels")
    for name in ["dense.dense_forward", "activations.bias_activation", "losses.loss_and_grad",
                 "optim.sgd_update", "network.train_epoch", "schedules.plateau_update",
                 "losses.weight_rows"]:
        assert f"fastmlp.kernels.{name}" in kernels
    callbacks = anchors(site, "api/callbacks")
    for name in ["Callback", "StepDecay", "ExponentialDecay", "CosineAnnealing",
                 "ReduceLROnPlateau", "EarlyStopping", "CSVLogger"]:
        assert f"fastmlp.callbacks.{name}" in callbacks
    assert "for whatever reason" in " ".join(page_text(site, "api/callbacks").split())


def test_docstring_markup_is_rendered(site):
    raw = (site / "api/fastmlp/index.html").read_text(encoding="utf-8")
    # reStructuredText roles became links (docs/_ext/rst_roles.py), not literal text.
    assert ":class:`" not in raw and ":meth:`" not in raw
    assert 'href="#fastmlp.Sequential.fit"' in raw
    kernels = page_text(site, "api/kernels")
    assert "=====" not in kernels  # the simple tables became tables


def test_user_guide_has_the_math(site):
    raw = (site / "user-guide/index.html").read_text(encoding="utf-8")
    assert 'class="arithmatex"' in raw
    # MathJax comes with the site (docs/javascripts/mathjax/), not from a CDN: the formulas
    # render offline (tests/test_web.py checks that in Chromium).
    assert '<script src="../javascripts/mathjax/tex-chtml.js"></script>' in raw
    assert not re.findall(r'<(?:script|link)\b[^>]*(?:src|href)="https?://', raw)
    assert (site / "javascripts/mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff").is_file()
    text = page_text(site, "user-guide")
    assert r"s = xW + b" in text
    assert r"y_k = f_k\left(y_{k-1} W_k + b_k\right)" in text
    for heading in ["Softmax cross-entropy", "Multiclass hinge", "Binary cross-entropy",
                    "Mean squared error", "Backpropagation over cached activations",
                    "SGD, momentum, Nesterov and weight decay", "Adam and AdamW",
                    "A linear softmax classifier", "A two-layer ReLU network"]:
        assert heading in text


def test_cli_and_other_pages(site):
    text = page_text(site, "cli")
    for command in ["train", "predict", "evaluate", "demo", "bench", "info", "export"]:
        assert f"fastmlp {command}" in text
    for page in ["quickstart", "performance", "file-format", "architecture", "examples",
                 "distributed", "sklearn", "compare-results"]:
        assert (site / page / "index.html").is_file(), page


def test_deployment_page_and_interop_api(site):
    ids = anchors(site, "api/fastmlp")
    assert {"fastmlp.Sequential.export", "fastmlp.Sequential.to_torch", "fastmlp.from_torch"} <= ids
    assert "fastmlp export" in page_text(site, "cli")
    text = page_text(site, "deployment")
    for phrase in ["Serving a fastmlp model with ONNX Runtime", "InferenceSession",
                   "A PyTorch network in fastmlp", "from_torch", "opset 18"]:
        assert phrase in text
