#!/usr/bin/env python3
"""Writes the package's machine-readable copyright file (DEP-5) to stdout:

    cross/deb/copyright.py TRIPLE

/usr/bin/sidegate is static: every crate it links is in it, with its licence's conditions
(most are MIT, which asks that its notice travel with the binary). The crates are those
`cargo metadata --filter-platform TRIPLE` resolves for this target, followed from sidegate
through normal dependencies only: dev- and build-dependencies, and proc-macro crates with
what only they use, run at build time and are not in the binary. Each crate gets a Files
paragraph (its source, as `cargo vendor` would lay it out) with the copyright lines of its own
licence files, and every licence named gets a paragraph with its text (or, where Debian ships
it, the path in /usr/share/common-licenses). The C and Rust runtime linked in (Rust's std,
musl; libgcc's unwinder on armv7) are listed too.
"""

import json
import os
import re
import subprocess
import sys

COMMON = {  # licences whose text every Debian system has
    "Apache-2.0": "/usr/share/common-licenses/Apache-2.0",
    "MPL-2.0": "/usr/share/common-licenses/MPL-2.0",
    "GPL-3+": "/usr/share/common-licenses/GPL-3",
}
# A notice: "Copyright (c) 2016 ...", "Copyright 2015 Brian Smith", "© ...", not the licence
# texts' own sentences ("Copyright License.", "copyright notice that ...").
NOTICE = re.compile(r"^(Copyright|COPYRIGHT)\s+(?!(notice|license|licence|holders?|owners?|statement)\b)(\(c\)|©|\d|[A-Z])|^©", re.I)
LICENCE_FILE = re.compile(r"^(licen[cs]e|copying|unlicense)", re.I)
# Template lines of licence texts, not anyone's notice.
TEMPLATE = re.compile(r"\[yyyy\]|<year>|\{yyyy\}|\[name of copyright owner\]|<copyright holders>", re.I)


def die(msg):
    sys.exit(f"copyright.py: {msg}")


def linked_crates(triple):
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", triple],
        check=True, capture_output=True, text=True,
    ).stdout
    meta = json.loads(out)
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = meta["resolve"]["root"]

    def proc_macro(p):
        return any("proc-macro" in t["kind"] for t in p["targets"])

    seen, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid in seen or proc_macro(packages[pid]):
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            if any(k["kind"] is None for k in dep["dep_kinds"]):
                stack.append(dep["pkg"])
    seen.discard(root)
    crates = sorted((packages[i] for i in seen), key=lambda p: (p["name"], p["version"]))
    if not crates:
        die("no crates resolved")
    return packages[root], crates


def dep5_expression(spdx):
    """Cargo's SPDX expression (or the old `A/B` form) in DEP-5 syntax."""
    expr = spdx.replace("/", " OR ")
    expr = re.sub(r"(\S+) WITH (\S+?)(-exception)?(?=\s|\)|$)", r"\1 with \2 exception", expr)
    expr = re.sub(r"\bOR\b", "or", expr)
    return re.sub(r"\bAND\b", "and", expr)


def licence_names(expr):
    """The licence names of a DEP-5 expression (an exception stays with its licence)."""
    parts = re.split(r"\s+(?:or|and)\s+", expr.replace("(", "").replace(")", ""))
    return [p.strip() for p in parts if p.strip()]


def licence_files(crate):
    src = os.path.dirname(crate["manifest_path"])
    return [
        os.path.join(src, f) for f in sorted(os.listdir(src))
        if LICENCE_FILE.match(f) and os.path.isfile(os.path.join(src, f))
    ]


def notices(crate):
    lines = []
    for path in licence_files(crate):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if NOTICE.match(line) and not TEMPLATE.search(line):
                    if line not in lines:
                        lines.append(line)
    if not lines:
        authors = [re.sub(r"\s*<[^>]*>", "", a) for a in crate.get("authors") or []]
        lines = authors or [f"the {crate['name']} authors"]
    return lines


def text_of(name, crates):
    """A licence's text from the licence file of a crate under it alone or named after it."""
    key = {"MIT": "mit", "Apache-2.0": "apache", "ISC": "isc", "BSD-3-Clause": "bsd",
           "Unlicense": "unlicense"}.get(name, name.lower())
    for crate in crates:
        names = licence_names(dep5_expression(crate["license"] or ""))
        for path in licence_files(crate):
            base = os.path.basename(path).lower()
            if key in base or (names == [name] and base.split(".")[0] in ("license", "licence", "copying")):
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read().strip("\n").splitlines()
                # The notice lines belong to that crate; they are in its Files paragraph.
                while text and (NOTICE.match(text[0].strip()) or not text[0].strip()):
                    text.pop(0)
                if text:
                    return text
    return None


def field(name, lines):
    """A DEP-5 field: first line after the name, the rest indented, blank lines as ` .`."""
    first, *rest = lines
    out = [f"{name}: {first}".rstrip()]
    out += [f" {l.rstrip()}" if l.strip() else " ." for l in rest]
    return "\n".join(out)


def main():
    if len(sys.argv) != 2:
        die("usage: copyright.py TRIPLE")
    triple = sys.argv[1]
    root, crates = linked_crates(triple)
    paragraphs = [
        "\n".join([
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
            "Upstream-Name: sidegate",
            field("Comment", [
                f"/usr/bin/sidegate is one static binary ({triple}): besides sidegate's own",
                f"code it holds the {len(crates)} Rust crates below (each as `cargo vendor`",
                "lays out its source), Rust's standard library and the C library it links.",
                "This file is generated from `cargo metadata` when the package is built.",
            ]),
        ]),
        "\n".join([
            "Files: *",
            "Copyright: the sidegate developers",
            f"License: {dep5_expression(root['license'])}",
        ]),
    ]
    used = {dep5_expression(root["license"])}
    for crate in crates:
        if not crate["license"]:
            die(f"{crate['name']} {crate['version']} declares no licence (license-file only)")
        expr = dep5_expression(crate["license"])
        used.update(licence_names(expr))
        comment = [f"{crate['name']} {crate['version']}"]
        if crate.get("repository"):
            comment[0] += f", {crate['repository']}"
        paragraphs.append("\n".join([
            f"Files: vendor/{crate['name']}-{crate['version']}/*",
            field("Copyright", notices(crate)),
            f"License: {expr}",
            field("Comment", comment),
        ]))
    runtime = [
        ("rust/library/*", "The Rust Project Developers", "MIT or Apache-2.0",
         "Rust's standard library (std, core, alloc, compiler_builtins), linked statically."),
    ]
    if "musl" in triple:
        runtime.append(("musl/*", "2005-2020 Rich Felker, et al.", "MIT",
                        "musl, the C library, linked statically."))
    if triple.startswith("armv7"):
        runtime.append(("gcc/libgcc/*", "Free Software Foundation, Inc.",
                        "GPL-3+ with GCC-3.1 exception",
                        "libgcc_eh, the unwinder linked on armv7 (GCC Runtime Library Exception)."))
    for files, who, licence, what in runtime:
        used.update(licence_names(licence))
        paragraphs.append("\n".join([
            f"Files: {files}", f"Copyright: {who}", f"License: {licence}", f"Comment: {what}",
        ]))

    for name in sorted(used):
        base = name.split(" with ")[0]
        if base in COMMON:
            body = [f"On Debian systems the complete text of this licence is in {COMMON[base]}."]
            if " with " in name:
                body.append(f"The exception ({name.split(' with ')[1]}) is part of the "
                            "licence files of the crates and toolchain that carry it.")
        else:
            body = text_of(base, crates)
            if body is None:
                if base == "MIT" and "musl" in triple:
                    body = MIT_TEXT
                else:
                    die(f"no text found for the licence {name!r}")
        paragraphs.append(field("License", [name] + body))
    print("\n\n".join(paragraphs))


MIT_TEXT = """Permission is hereby granted, free of charge, to any person obtaining
a copy of this software and associated documentation files (the
"Software"), to deal in the Software without restriction, including
without limitation the rights to use, copy, modify, merge, publish,
distribute, sublicense, and/or sell copies of the Software, and to
permit persons to whom the Software is furnished to do so, subject to
the following conditions:

The above copyright notice and this permission notice shall be
included in all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND,
EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.
IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY
CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT,
TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE
SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.""".splitlines()

if __name__ == "__main__":
    main()
