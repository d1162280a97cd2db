#!/usr/bin/env python3
"""Prints the licenses of every crate linked into the roomhook binary for one target (the
crates.io packages that `cargo metadata` resolves as normal dependencies), each with its
license files as the crate ships them. The .deb installs the output as
/usr/share/doc/roomhook/THIRD-PARTY-LICENSES: MIT, BSD and ISC licenses ask for their
notices to travel with a binary, and none of the crates has an Apache NOTICE file.

    packaging/third-party.py [TARGET-TRIPLE] > THIRD-PARTY-LICENSES

The list is a superset for a build without the demo: cargo metadata resolves the
workspace's features together (demo, faults, testkit), so a gateway package also lists
the demo's rcgen and its dependencies.
"""
import json
import os
import subprocess
import sys


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else None
    cmd = ["cargo", "metadata", "--format-version", "1", "--locked"]
    if target:
        cmd += ["--filter-platform", target]
    meta = json.loads(subprocess.check_output(cmd))
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = next(p["id"] for p in meta["packages"] if p["name"] == "roomhook")
    # Normal (not dev, not build) dependencies, transitively, with the default features.
    seen, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            if any(k["kind"] is None for k in dep["dep_kinds"]):
                stack.append(dep["pkg"])
    seen.discard(root)
    crates = sorted((packages[p] for p in seen), key=lambda p: (p["name"], p["version"]))
    out = sys.stdout
    out.write("Third-party software in roomhook\n================================\n\n")
    out.write(
        "The roomhook binary is statically linked with the Rust crates below (from crates.io).\n"
        "Each is listed with its license expression and the license files it ships.\n"
        "None of them carries an Apache-2.0 NOTICE file.\n\n"
    )
    for p in crates:
        out.write(f"- {p['name']} {p['version']}: {p.get('license') or 'see its license file'}\n")
    for p in crates:
        folder = os.path.dirname(p["manifest_path"])
        files = sorted(
            f for f in os.listdir(folder)
            if f.upper().startswith(("LICENSE", "LICENCE", "COPYING", "NOTICE", "UNLICENSE"))
            and os.path.isfile(os.path.join(folder, f))
        )
        if p.get("license_file"):
            files = sorted(set(files) | {p["license_file"]})
        out.write("\n" + "=" * 78 + "\n")
        out.write(f"{p['name']} {p['version']} ({p.get('license') or 'license file'})\n")
        if p.get("authors"):
            out.write("Authors: " + ", ".join(p["authors"]) + "\n")
        if p.get("repository"):
            out.write(f"Source: {p['repository']}\n")
        if not files:
            out.write("(the crate ships no license file; its license is the expression above)\n")
        for f in files:
            with open(os.path.join(folder, f), encoding="utf-8", errors="replace") as fh:
                out.write(f"\n--- {f} ---\n\n{fh.read().rstrip()}\n")


if __name__ == "__main__":
    main()
