"""``asv publish``, then make the published dashboard self-contained (no CDN, works offline).

asv's pages load jQuery, flot and its plugins, stupidtable, blueimp-md5 and Bootstrap from
CDNs; without internet the dashboard shows only "Can not determine continental origin of
swallow".  This script runs ``asv publish`` with the arguments it is given, copies the same
libraries from ``benchmarks/vendor/`` (taken from the npm registry: see vendor.json and
README.txt there) next to the pages, and points every page at the copies.  A page that loads
anything else from the network is an error that names the URL (a newer asv, say), so the
dashboard never silently depends on a CDN again.

Run it from anywhere, with the environment that has asv::

    python benchmarks/publish.py                 # asv publish, html_dir of asv.conf.json
    python benchmarks/publish.py --html-dir DIR  # any other asv publish argument passes through
    python benchmarks/publish.py --no-publish --html-dir DIR   # only rewrite DIR's pages

Then ``cd benchmarks && asv preview`` (or any static web server) shows the dashboard.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
VENDOR = os.path.join(BENCHMARKS, "vendor")
#: Where the copies go, inside the published directory.
VENDOR_SUBDIR = "vendor"

_TAG = re.compile(r"<(script|link)\b[^>]*>", re.IGNORECASE)
_ATTR = re.compile(r'\s(src|href|integrity|crossorigin|referrerpolicy)="([^"]*)"', re.IGNORECASE)


class PublishError(RuntimeError):
    """The published pages cannot be made self-contained."""


def load_manifest(vendor_dir=VENDOR):
    """vendor.json's entries, each checked against its file's sha256 (so a page never gets
    a file other than the one recorded)."""
    with open(os.path.join(vendor_dir, "vendor.json"), encoding="utf-8") as f:
        entries = json.load(f)["files"]
    for entry in entries:
        path = os.path.join(vendor_dir, entry["file"])
        if not os.path.isfile(path):
            raise PublishError(f"{path} is missing: vendor.json lists it for {entry['url']}")
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != entry["sha256"]:
            raise PublishError(f"{path} has sha256 {digest}, vendor.json records {entry['sha256']}")
    return entries


def _sri(path, integrity):
    """Whether ``path``'s content has the subresource-integrity hash ``integrity``."""
    algorithm, _, expected = integrity.partition("-")
    with open(path, "rb") as f:
        digest = hashlib.new(algorithm, f.read()).digest()
    return base64.b64encode(digest).decode() == expected


def rewrite_page(page, html_dir, entries, vendor_dir=VENDOR):
    """Point ``page``'s ``<script src>`` and ``<link href>`` tags at the vendored copies.

    The ``integrity``, ``crossorigin`` and ``referrerpolicy`` attributes go: they are for a
    third-party CDN, and the copies are served from the pages' own origin (their hashes are
    checked by :func:`load_manifest` instead).  Where vendor.json says the copy is the CDN's
    very file, the page's integrity hash is checked against it first.  Returns the new text
    of the page and the URLs replaced (the file is not written); raises
    :class:`PublishError` for a tag that would still load from the network.
    """
    by_url = {entry["url"]: entry for entry in entries}
    prefix = os.path.relpath(os.path.join(html_dir, VENDOR_SUBDIR), os.path.dirname(page))
    replaced = []

    def replace(match):
        tag = match.group(0)
        attrs = {name.lower(): value for name, value in _ATTR.findall(tag)}
        url = attrs.get("src") if match.group(1).lower() == "script" else attrs.get("href")
        if url is None or not re.match(r"(https?:)?//", url):
            return tag
        entry = by_url.get(url)
        if entry is None:
            raise PublishError(f"{os.path.relpath(page, html_dir)} loads {url}, which "
                               "benchmarks/vendor/vendor.json does not provide (a newer asv?): "
                               "vendor it from the npm registry and list it there")
        if entry["identical_to_url"] and "integrity" in attrs and not _sri(
                os.path.join(vendor_dir, entry["file"]), attrs["integrity"]):
            raise PublishError(f"{entry['file']} does not match the integrity hash that "
                               f"{os.path.relpath(page, html_dir)} gives for {url}")
        local = "/".join([prefix.replace(os.sep, "/"), entry["file"]])
        replaced.append(url)

        def attribute(m):
            name = m.group(1).lower()
            if name in ("integrity", "crossorigin", "referrerpolicy"):
                return ""
            return f' {m.group(1)}="{local}"' if m.group(2) == url else m.group(0)

        return _ATTR.sub(attribute, tag)

    with open(page, encoding="utf-8") as f:
        text = f.read()
    return _TAG.sub(replace, text), replaced


def make_self_contained(html_dir, vendor_dir=VENDOR):
    """Copy the vendored libraries into ``html_dir/vendor`` and rewrite every page under
    ``html_dir``.  Returns ``{page: [urls replaced]}``."""
    entries = load_manifest(vendor_dir)
    pages = sorted(os.path.join(root, name) for root, _, names in os.walk(html_dir)
                   for name in names if name.endswith(".html"))
    if not pages:
        raise PublishError(f"no .html pages under {html_dir}: run asv publish first")
    # Every page checked before anything is written.
    rewritten = {page: rewrite_page(page, html_dir, entries, vendor_dir) for page in pages}
    target = os.path.join(html_dir, VENDOR_SUBDIR)
    if os.path.exists(target):
        shutil.rmtree(target)
    # The libraries and their license texts (one folder per npm package).
    shutil.copytree(vendor_dir, target, ignore=shutil.ignore_patterns("vendor.json"))
    for page, (text, _) in rewritten.items():
        with open(page, "w", encoding="utf-8") as f:
            f.write(text)
    return {os.path.relpath(page, html_dir): urls for page, (_, urls) in rewritten.items()}


def _html_dir(asv_args):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--html-dir", "-o")
    parser.add_argument("--config")
    known, _ = parser.parse_known_args(asv_args)
    if known.html_dir:
        return os.path.abspath(known.html_dir)
    from asv.util import load_json  # asv.conf.json has // comments
    config = known.config or os.path.join(BENCHMARKS, "asv.conf.json")
    conf = load_json(config, js_comments=True)
    return os.path.join(os.path.dirname(os.path.abspath(config)), conf.get("html_dir", "html"))


def _absolute_paths(args):
    """``args`` with the paths given to ``--html-dir``/``-o``/``--config`` made absolute."""
    options = ("--html-dir", "-o", "--config")
    out = []
    for i, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if equals and name in options:
            arg = f"{name}={os.path.abspath(value)}"
        elif i and args[i - 1] in options:
            arg = os.path.abspath(arg)
        out.append(arg)
    return out


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    publish = "--no-publish" not in argv
    asv_args = [a for a in argv if a != "--no-publish"]
    if publish:
        asv = shutil.which("asv", path=os.path.dirname(sys.executable)) or shutil.which("asv")
        if asv is None:
            sys.exit("publish.py: asv is not installed (pip install asv, or '.[bench]')")
        asv_args = _absolute_paths(asv_args)  # asv runs in benchmarks/, not here
        done = subprocess.run([asv, "publish", *asv_args], cwd=BENCHMARKS)
        if done.returncode:
            sys.exit(done.returncode)
    html_dir = _html_dir(asv_args)
    try:
        pages = make_self_contained(html_dir)
    except PublishError as exc:
        sys.exit(f"publish.py: {exc}")
    count = sum(len(urls) for urls in pages.values())
    print(f"publish.py: {count} CDN references in {len(pages)} pages now load from "
          f"{os.path.join(html_dir, VENDOR_SUBDIR)}")


if __name__ == "__main__":
    main()
