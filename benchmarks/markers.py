"""Generated blocks in Markdown files: the text between a ``<!-- name -->`` / ``<!-- /name -->`` pair."""

from __future__ import annotations

from pathlib import Path


def splice_block(path: Path, begin: str, end: str, body: str) -> None:
    """Replace what lies between the markers ``begin`` and ``end`` in ``path`` with ``body`` (markers kept,
    each on its own line); a file without both markers is an error naming them."""
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    path.write_text(f"{head}{begin}\n{body.strip(chr(10))}\n{end}{rest.split(end, 1)[1]}")
