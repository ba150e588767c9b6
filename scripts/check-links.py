#!/usr/bin/env python3
"""Check the relative links and images of cotext's documentation.

    python3 scripts/check-links.py [FILE.md ...]
    python3 scripts/check-links.py --self-test

Without arguments it checks README.md and docs/*.md (paths relative to the
repository root, wherever it is called from). Every inline link and image
`[text](target)` / `![alt](target)` and every reference definition
`[name]: target` outside code is checked:

* a relative target must exist (file or folder), resolved against the folder of
  the Markdown file that holds it;
* a `#anchor` (alone, or after a `.md` target) must be a heading of the target
  file, slugged the way GitHub does it, or an explicit `<a name>`/`id` anchor.

Absolute URLs (`https:`, `mailto:` …) are not fetched: the check runs offline.
Anchors into files that are not Markdown (`src/x.rs#L10`) are not checked.

Exit status: 0 when every link resolves, 1 listing the broken ones
(`file:line: target: why`), 2 for bad usage. Python 3 standard library only.
"""

import os
import re
import sys
import tempfile
import unicodedata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the text may hold one level of brackets
# (`[a [b] c](x)`) and the target may be followed by a quoted title.
INLINE = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]*(?:\([^()\s]*\)[^()\s<>]*)*)>?"
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:name|id)\s*=\s*\"([^\"]+)\"", re.IGNORECASE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def strip_inline_markdown(text):
    """The text GitHub renders for a heading: code spans keep their content,
    links keep their text, emphasis markers and HTML tags go."""
    spans = []

    def keep(match):
        spans.append(match.group(2).strip())
        return "\x00%d\x00" % (len(spans) - 1)

    text = CODE_SPAN.sub(keep, text)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"(\*+|(?<![A-Za-z0-9])_+|_+(?![A-Za-z0-9]))", "", text)
    return re.sub("\x00(\\d+)\x00", lambda m: spans[int(m.group(1))], text)


def github_slug(heading):
    """GitHub's heading anchor (github-slugger): lower case, every character
    that is not a letter, a digit, a mark, `-`, `_` or a space removed, each
    space turned into `-`."""
    out = []
    for ch in strip_inline_markdown(heading).lower():
        category = unicodedata.category(ch)
        if ch in "-_" or category[0] in "LNM":
            out.append(ch)
        elif ch == " ":
            out.append("-")
    return "".join(out)


def markdown_lines(text):
    """(line number, line) for each line outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.split("\n"), 1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                continue
            yield number, line
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            fence = None


def anchors_of(path, cache={}):
    """Every anchor a Markdown file defines, with GitHub's -1, -2 … suffixes
    for repeated headings."""
    if path not in cache:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        anchors, seen = set(), {}
        for _, line in markdown_lines(text):
            heading = HEADING.match(line)
            if heading:
                slug = github_slug(heading.group(2))
                n = seen.get(slug, 0)
                seen[slug] = n + 1
                anchors.add(slug if n == 0 else "%s-%d" % (slug, n))
            anchors.update(HTML_ANCHOR.findall(line))
        cache[path] = anchors
    return cache[path]


def links_of(text):
    """(line number, target) for every link, image and reference definition
    outside code."""
    for number, line in markdown_lines(text):
        definition = REFERENCE_DEF.match(line)
        if definition:
            yield number, definition.group(1)
            continue
        outside_code = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
        for match in INLINE.finditer(outside_code):
            yield number, match.group(1)


def check_file(path):
    """The broken links of one Markdown file, as (line, target, reason)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    broken = []
    base = os.path.dirname(os.path.abspath(path))
    for number, target in links_of(text):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue
        file_part, _, anchor = target.partition("#")
        file_part = file_part.split("?", 1)[0]
        resolved = os.path.normpath(os.path.join(base, file_part)) if file_part else os.path.abspath(path)
        if not os.path.exists(resolved):
            broken.append((number, target, "no such file or folder"))
            continue
        if anchor and resolved.endswith(".md") and os.path.isfile(resolved):
            if anchor not in anchors_of(resolved):
                where = "this file" if not file_part else os.path.relpath(resolved, ROOT)
                broken.append((number, target, "no heading with anchor #%s in %s" % (anchor, where)))
    return broken


def default_files():
    files = [os.path.join(ROOT, "README.md")]
    docs = os.path.join(ROOT, "docs")
    if os.path.isdir(docs):
        files += sorted(
            os.path.join(docs, name) for name in os.listdir(docs) if name.endswith(".md")
        )
    return files


def self_test():
    """The slug rules and the checker on known cases; exits 1 on a failure."""
    cases = {
        "Training classifiers: `cotext train`, `eval`, `predict`": "training-classifiers-cotext-train-eval-predict",
        "Results (`cotext compare`)": "results-cotext-compare",
        "GPU: CUDA, Metal and mixed precision": "gpu-cuda-metal-and-mixed-precision",
        "Configuration (`[model]` table; unknown keys are rejected)": "configuration-model-table-unknown-keys-are-rejected",
        "`complement_lr_scale` and *Adam*": "complement_lr_scale-and-adam",
        "What COT is, and why": "what-cot-is-and-why",
        "Cost: 2× — ÷K vs ÷(K−1)": "cost-2--k-vs-k1",
        "A [linked](https://x.org) heading": "a-linked-heading",
    }
    failures = []
    for heading, expected in cases.items():
        got = github_slug(heading)
        if got != expected:
            failures.append("slug of %r: expected %r, got %r" % (heading, expected, got))
    with tempfile.TemporaryDirectory() as tmp:
        os.mkdir(os.path.join(tmp, "docs"))
        with open(os.path.join(tmp, "img.png"), "w"):
            pass
        with open(os.path.join(tmp, "docs", "a.md"), "w", encoding="utf-8") as f:
            f.write("# Title\n\n## Twice\n\n## Twice\n\n<a name=\"kept\"></a>\n")
        page = os.path.join(tmp, "page.md")
        with open(page, "w", encoding="utf-8") as f:
            f.write(
                "# Page\n\n"
                "[ok](docs/a.md#twice-1) [ok](#page) ![ok](img.png \"t\") [ok](docs/a.md#kept)\n"
                "[bad](docs/a.md#twice-2) [bad](missing.md) ![bad](no.png) [bad](#nowhere)\n"
                "`[not a link](nope.md)` [ok](https://example.org/x#y)\n"
                "```\n[in code](nope.md)\n```\n"
                "[ref]: docs/gone.md\n"
            )
        got = sorted((line, target) for line, target, _ in check_file(page))
        expected = [(4, "#nowhere"), (4, "docs/a.md#twice-2"), (4, "missing.md"), (4, "no.png"), (9, "docs/gone.md")]
        if got != expected:
            failures.append("checker on the fixture: expected %r, got %r" % (expected, got))
    for failure in failures:
        print("self-test: " + failure)
    print("self-test: %s" % ("FAILED" if failures else "ok"))
    return 1 if failures else 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    if any(arg.startswith("-") for arg in argv[1:]):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    files = argv[1:] or default_files()
    total, broken = 0, 0
    for path in files:
        if not os.path.isfile(path):
            print("%s: no such file" % path, file=sys.stderr)
            return 2
        with open(path, encoding="utf-8") as f:
            total += sum(1 for _ in links_of(f.read()))
        shown = os.path.relpath(os.path.abspath(path), ROOT)
        for line, target, why in check_file(path):
            print("%s:%d: %s: %s" % (shown, line, target, why))
            broken += 1
    print("%d broken of %d links in %d files" % (broken, total, len(files)))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
