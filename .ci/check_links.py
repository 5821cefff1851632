#!/usr/bin/env python3
# Usage: python3 .ci/check_links.py [repo root]   (relative links and #anchors of the guides; exit 1 if any is broken)
"""Checks every relative Markdown link (and image) in README.md, docs/*.md,
evaluate/README.md and evaluate/studies/*.md: the target file or directory
must exist, and a #fragment must match a heading of the target (GitHub slugs).
Usage: check_links.py [repo root]. Exit 1 on any broken link."""
import glob, os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else "."
files = ["README.md", "evaluate/README.md"] + sorted(glob.glob(os.path.join(root, "docs/*.md"))) \
    + sorted(glob.glob(os.path.join(root, "evaluate/studies/*.md")))
files = [os.path.relpath(os.path.join(root, f), root) if not os.path.isabs(f) else os.path.relpath(f, root) for f in files]
link = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
def strip_code(text):
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)
def slugs(path):
    out, infence = set(), False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"): infence = not infence
        if infence or not line.startswith("#"): continue
        h = line.lstrip("#").strip().lower()
        h = re.sub(r"[^\w\- ]", "", h)
        out.add(h.replace(" ", "-"))
    return out
bad, n = [], 0
for f in files:
    text = strip_code(open(os.path.join(root, f), encoding="utf-8").read())
    for m in link.finditer(text):
        target = m.group(1)
        if re.match(r"^[a-z]+:", target) or target.startswith("//"): continue
        n += 1
        path, _, frag = target.partition("#")
        full = os.path.normpath(os.path.join(root, os.path.dirname(f), path)) if path else os.path.join(root, f)
        if not os.path.exists(full):
            bad.append(f"{f}: {target}: no such file"); continue
        if frag and full.endswith(".md") and frag not in slugs(full):
            bad.append(f"{f}: {target}: no heading #{frag}")
print(f"{len(files)} files, {n} relative links, {len(bad)} broken")
for b in bad: print("  " + b)
sys.exit(1 if bad else 0)
