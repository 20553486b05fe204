"""Griffe extension: render fastmlp's numpydoc docstrings (reStructuredText bits) as Markdown.

The docstrings follow numpydoc, so they use a few reStructuredText constructs that Markdown
does not know.  mkdocstrings would print them verbatim; this extension rewrites them when
griffe loads the package, before any docstring is parsed:

- cross-reference roles (``:class:`~fastmlp.Sequential```, ``:meth:`fit```,
  ``:func:`title <target>```) become links, through mkdocs-autorefs.  A name is looked up
  the way Sphinx would: in the documented object, then in each enclosing class and module.
  The links are *optional*: a target that the site does not document (a private helper)
  is shown as code instead of failing the strict build;
- simple tables (columns under ``====  ====`` rules) become Markdown tables;
- a definition list in the free text before the first numpydoc section (a ``name : type``
  line, then its indented description) becomes a bulleted list;
- a doctest outside an Examples section (griffe already handles those) becomes a code
  block, instead of a Markdown quote;
- a paragraph ending in ``::`` (the literal-block marker) ends in ``:``.

Enabled in mkdocs.yml under the python handler's ``extensions`` option.
"""

import html
import re

import griffe

ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|attr|data|exc|obj):`([^`]+)`")
EXPLICIT_TITLE = re.compile(r"^(.*?)\s*<([^<>]+)>$")
RULE = re.compile(r"^( *)(=+)( +=+)+ *$")
LITERAL_MARKER = re.compile(r"(\S)::$", flags=re.MULTILINE)
DEFINITION = re.compile(r"^(\S.*?) : (\S.*)$")
SECTION_RULE = re.compile(r"^\s*-{3,}\s*$")


def _target_path(obj, name):
    """The canonical path of ``name`` as seen from ``obj``'s docstring, or ``name`` itself."""
    scope = obj if (obj.is_class or obj.is_module) else obj.parent
    first = name.split(".")[0]
    candidates = []
    while scope is not None:
        if first in scope.members:
            candidates.append(scope)
        scope = scope.parent
    for scope in candidates:
        try:
            return scope[name].canonical_path
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
    try:
        return obj.modules_collection[name].canonical_path
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return name


def _replace_roles(obj, text):
    def link(match):
        kind, body = match.group(1), match.group(2).strip()
        explicit = EXPLICIT_TITLE.match(body)
        if explicit:
            title, name = explicit.group(1), explicit.group(2)
        else:
            name = body.lstrip("~")
            title = name.rsplit(".", 1)[-1] if body.startswith("~") else name
            if kind in ("func", "meth"):
                title += "()"
        target = _target_path(obj, name)
        return (f'<autoref identifier="{html.escape(target)}" optional>'
                f"<code>{html.escape(title)}</code></autoref>")

    return ROLE.sub(link, text)


def _cells(line, spans):
    return [line[start:stop].strip() for start, stop in spans]


def _markdown_table(rows):
    def escape(cell):
        # A "|" ends a cell unless it sits in a code span; only the ones outside need "\\|".
        parts = re.split(r"(`+[^`]*`+)", cell)
        return "".join(part if part.startswith("`") else part.replace("|", "\\|") for part in parts)

    def row_text(cells):
        return "| " + " | ".join(escape(cell) for cell in cells) + " |"

    header, body = rows[0], rows[1:]
    return [row_text(header), "|" + "|".join("---" for _ in header) + "|"] + [row_text(r) for r in body]


def _replace_tables(text):
    """Convert reStructuredText simple tables (three rules: top, under the header, bottom)."""
    lines = text.split("\n")
    out = []
    i = 0
    while i < len(lines):
        rule = RULE.match(lines[i])
        if not rule:
            out.append(lines[i])
            i += 1
            continue
        # Column spans from the rule; a column's text may run on to the end of the line.
        spans = [m.span() for m in re.finditer(r"=+", lines[i])]
        spans = [(start, spans[k + 1][0] if k + 1 < len(spans) else None)
                 for k, (start, _) in enumerate(spans)]
        ends = [j for j in range(i + 1, len(lines)) if lines[j].strip() == lines[i].strip()]
        if len(ends) < 2:  # not a complete table: leave it alone
            out.append(lines[i])
            i += 1
            continue
        header_rule, bottom = ends[0], ends[1]
        rows = []
        for j in list(range(i + 1, header_rule)) + list(range(header_rule + 1, bottom)):
            if not lines[j].strip():
                continue
            cells = _cells(lines[j], spans)
            if rows and not cells[0] and j > header_rule + 1:
                # A continuation line: its text belongs to the row above.
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
            else:
                rows.append(cells)
        if out and out[-1].strip():
            out.append("")
        indent = rule.group(1)
        out.extend(indent + line for line in _markdown_table(rows))
        i = bottom + 1
    return "\n".join(out)


def _replace_definitions(text):
    """Turn ``term : classifier`` + indented description into ``- term (classifier): ...``."""
    lines = text.split("\n")
    out = []
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and SECTION_RULE.match(lines[i + 1]):
            out.extend(lines[i:])  # numpydoc sections keep their own syntax
            break
        match = DEFINITION.match(lines[i])
        body_indent = len(lines[i + 1]) - len(lines[i + 1].lstrip()) if i + 1 < len(lines) else 0
        if not match or body_indent == 0 or not lines[i + 1].strip():
            out.append(lines[i])
            i += 1
            continue
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() and lines[i].startswith(" " * body_indent):
            body.append(lines[i][body_indent:])
            i += 1
        if out and out[-1].strip() and not out[-1].startswith("- "):
            out.append("")
        out.append(f"- {match.group(1)} ({match.group(2)}): {body[0]}")
        out.extend("  " + line for line in body[1:])
    return "\n".join(out)


def _fence_doctests(text):
    """Put ``>>>`` blocks outside the Examples section into fenced code blocks."""
    lines = text.split("\n")
    out = []
    section = None
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and SECTION_RULE.match(lines[i + 1]) and lines[i].strip():
            section = lines[i].strip()
        stripped = lines[i].lstrip()
        if section != "Examples" and stripped.startswith(">>>"):
            indent = lines[i][:len(lines[i]) - len(stripped)]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].strip())
                i += 1
            if out and out[-1].strip():
                out.append("")
            out.extend([indent + "```pycon"] + [indent + line for line in block] + [indent + "```"])
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring of a loaded package (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self._done = set()

    def on_package(self, *, pkg, **kwargs):
        """The hook's name from griffe 2 on."""
        self._rewrite(pkg)

    def on_package_loaded(self, *, pkg, **kwargs):
        """The same hook's name in griffe 1.x."""
        self._rewrite(pkg)

    def _rewrite(self, pkg):
        for obj in _walk(pkg):
            if obj.docstring is not None and id(obj.docstring) not in self._done:
                self._done.add(id(obj.docstring))
                text = _replace_definitions(_replace_tables(obj.docstring.value))
                text = _fence_doctests(text)
                text = LITERAL_MARKER.sub(r"\1:", text)
                obj.docstring.value = _replace_roles(obj, text)


def _walk(obj):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)
