#!/usr/bin/env python3
"""Print the library's module-level import graph and its cycles.

Reads every `crate::…` / `super::…` path in src/**/*.rs (the library: the
modules reachable from src/lib.rs; the binary's src/main.rs and src/cli/ are
left out), resolves each to the module it names, and prints:
  * the edges between top-level modules (with one example file per edge),
  * the cycles (strongly connected components) between top-level modules,
  * the cycles between sibling files inside each folder.
Comments and `#[cfg(test)]` modules are skipped (`--with-tests` keeps the
latter). Always exits 0: it reports, the reader decides.

    python3 .ci/layers.py [--with-tests] [--edges]
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def strip_test_modules(text):
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def modules():
    """module path (tuple) -> file, for the library's modules."""
    mods = {}

    def walk(path, file):
        mods[path] = file
        text = strip_comments(open(file).read())
        base = os.path.dirname(file)
        stem = os.path.splitext(os.path.basename(file))[0]
        if stem not in ("mod", "lib"):
            base = os.path.join(base, stem)
        for m in re.finditer(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text, re.M):
            name = m.group(1)
            for cand in (os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")):
                if os.path.exists(cand):
                    walk(path + (name,), cand)
                    break

    walk((), os.path.join(SRC, "lib.rs"))
    return mods


def use_paths(tree):
    """Expand a use tree `a::{b, c::{d, e}}` into its paths."""
    tree = tree.strip()
    m = re.match(r"^(.*?)\{(.*)\}\s*$", tree, re.S)
    if not m:
        return [tree.split(" as ")[0].strip()]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p.strip():
            for q in use_paths(p):
                out.append(prefix + q if q != "self" else prefix.rstrip(":"))
    return out


def paths_in(text):
    found = []
    for m in re.finditer(r"\buse\s+([^;]*);", text, re.S):
        found += [p for p in use_paths(m.group(1)) if p.startswith(("crate::", "super::", "self::"))]
    body = re.sub(r"\buse\s+[^;]*;", "", text, flags=re.S)
    found += re.findall(r"\b(?:crate|super)(?:::(?:super|\w+))+", body)
    return [re.sub(r"\s+", "", p) for p in found]


def resolve(path, here, mods, root_alias):
    parts = path.split("::")
    if parts[0] == "crate":
        cur, parts = (), parts[1:]
    else:
        cur = here
        while parts and parts[0] in ("super", "self"):
            if parts[0] == "super":
                cur = cur[:-1]
            parts = parts[1:]
    if not cur and parts and parts[0] in root_alias:
        return root_alias[parts[0]]
    best = cur
    for p in parts:
        if best + (p,) in mods:
            best = best + (p,)
        else:
            break
    return best


def sccs(nodes, edges):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    with_tests = "--with-tests" in sys.argv
    show_edges = "--edges" in sys.argv
    mods = modules()
    lib = strip_comments(open(mods[()]).read())
    root_alias = {}
    for m in re.finditer(r"\bpub\s+use\s+([^;]*);", lib, re.S):
        for p in use_paths(m.group(1)):
            name = p.split("::")[-1]
            target = resolve(p if p.startswith("crate") else "crate::" + p, (), mods, {})
            if target:
                root_alias[name] = target
    # deps[(from_module, to_module)] = example file
    deps = {}
    for mod, file in mods.items():
        if not mod:
            continue
        text = strip_comments(open(file).read())
        if not with_tests:
            text = strip_test_modules(text)
        for p in paths_in(text):
            target = resolve(p, mod, mods, root_alias)
            if target and target != mod:
                deps.setdefault((mod, target), os.path.relpath(file, os.path.join(SRC, "..")))

    # top level
    top_edges, top_why = {}, {}
    for (a, b), f in deps.items():
        if a[0] != b[0]:
            top_edges.setdefault(a[0], set()).add(b[0])
            top_why.setdefault((a[0], b[0]), set()).add(f)
    tops = sorted({m[0] for m in mods if m})
    if show_edges:
        print("# top-level edges (module -> modules it imports)")
        for a in tops:
            print(f"{a} -> {', '.join(sorted(top_edges.get(a, ())))}")
        print()
    mutual = [(a, b) for a in tops for b in tops if a < b and b in top_edges.get(a, ()) and a in top_edges.get(b, ())]
    print(f"# top-level pairs that import each other: {len(mutual)}")
    for a, b in mutual:
        print(f"{a} <-> {b}: {', '.join(sorted(top_why[(a, b)] | top_why[(b, a)]))}")
    print()
    cyc = sccs(tops, top_edges)
    print(f"# cycles between top-level modules: {len(cyc)}")
    for comp in cyc:
        print("cycle: " + " <-> ".join(comp))
        for a in comp:
            for b in comp:
                if (a, b) in top_why:
                    print(f"  {a} -> {b}: {', '.join(sorted(top_why[(a, b)]))}")
    # inside folders: siblings under one parent
    print()
    folder_cycles = 0
    parents = sorted({m[:-1] for m in mods if len(m) >= 2})
    lines = []
    for parent in parents:
        kids = sorted(m for m in mods if len(m) == len(parent) + 1 and m[:-1] == parent)
        edges, why = {}, {}
        for (a, b), f in deps.items():
            if len(a) > len(parent) and len(b) > len(parent) and a[:len(parent)] == parent and b[:len(parent)] == parent:
                ka, kb = a[:len(parent) + 1], b[:len(parent) + 1]
                if ka != kb:
                    edges.setdefault(ka, set()).add(kb)
                    why.setdefault((ka, kb), set()).add(f)
        for comp in sccs(kids, edges):
            folder_cycles += 1
            lines.append("cycle: " + " <-> ".join("::".join(c) for c in comp))
            for a in comp:
                for b in comp:
                    if (a, b) in why:
                        lines.append(f"  {'::'.join(a)} -> {'::'.join(b)}: {', '.join(sorted(why[(a, b)]))}")
    print(f"# cycles between files inside a folder: {folder_cycles}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
