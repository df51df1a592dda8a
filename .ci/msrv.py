"""Fails when a crate that mqrpc's published packages build needs a newer
Rust than the workspace's rust-version: every normal and build dependency
of mqrpc and mqrpc-cli, all features on, as Cargo.lock resolves them.
(Only one toolchain can be had here, so the language side is checked by
clippy's incompatible_msrv lint, which CI runs with -D warnings.)"""
import json
import subprocess
import sys


def version(text):
    """`1.89` and `1.89.0` alike, as (1, 89, 0)."""
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


metadata = json.loads(
    subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"]
    )
)
packages = {p["id"]: p for p in metadata["packages"]}
nodes = {n["id"]: n for n in metadata["resolve"]["nodes"]}
roots = [p["id"] for p in metadata["packages"] if p["name"] in ("mqrpc", "mqrpc-cli")]
msrv = version(packages[roots[0]]["rust_version"])

seen, stack = set(), list(roots)
while stack:
    node = nodes[stack.pop()]
    if node["id"] in seen:
        continue
    seen.add(node["id"])
    for dep in node["deps"]:
        if any(kind["kind"] in (None, "build") for kind in dep["dep_kinds"]):
            stack.append(dep["pkg"])

too_new = sorted(
    f"{packages[i]['name']} {packages[i]['version']} needs {packages[i]['rust_version']}"
    for i in seen
    if packages[i].get("rust_version") and version(packages[i]["rust_version"]) > msrv
)
print(f"msrv: {len(seen)} crates checked against Rust {packages[roots[0]]['rust_version']}")
if too_new:
    sys.exit("crates newer than the MSRV:\n  " + "\n  ".join(too_new))
