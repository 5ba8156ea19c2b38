"""Mirror the source tree (what a clone of it would hold, plus uncommitted edits) into a directory.

The CUDA build check builds and installs ``lpc_fast`` from such a copy, so that its CUDA
extension (``lpc_fast/_C*.so``, built against another torch) never replaces the CPU build in the
checkout. The files are those ``git ls-files --cached --others --exclude-standard`` lists;
unchanged files are left untouched (their timestamps too, so incremental builds stay
incremental), and files exported earlier that are gone from the tree are removed. Build outputs
in the copy (``build/``, ``*.so``, ``*.egg-info``) are never in that list and are kept.

Usage: ``python build_tools/export_tree.py DEST``
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

MANIFEST = ".exported-files"


def tree_files(repo: Path) -> list[str]:
    """Paths (relative to ``repo``) of the tracked and untracked, not ignored files that exist."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout.decode()
    files = {p for p in out.split("\0") if p}
    return sorted(p for p in files if (repo / p).is_file())


def export(repo: Path, dest: Path) -> tuple[int, int]:
    """Mirror ``repo``'s files into ``dest``; returns (files copied, files removed)."""
    dest.mkdir(parents=True, exist_ok=True)
    files = tree_files(repo)
    copied = 0
    for rel in files:
        src, dst = repo / rel, dest / rel
        if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        copied += 1
    manifest = dest / MANIFEST
    old = set(manifest.read_text().splitlines()) if manifest.is_file() else set()
    removed = 0
    for rel in sorted(old - set(files)):
        path = dest / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed += 1
    manifest.write_text("".join(f"{rel}\n" for rel in files))
    return copied, removed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python build_tools/export_tree.py DEST", file=sys.stderr)
        return 2
    repo = Path(__file__).resolve().parents[1]
    dest = Path(args[0]).resolve()
    if dest == repo:
        print(f"export_tree: the destination must not be the tree itself ({repo})", file=sys.stderr)
        return 2
    copied, removed = export(repo, dest)
    print(f"export_tree: {dest}: {copied} files updated, {removed} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
