"""Command-line inputs (files, folders, URLs) -> an ordered list of sources, and a source -> bytes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from blipq.contract.errors import UnreadableInput
from blipq.contract.urls import is_url
from blipq.inference.fetch import FetchPolicy, fetch_url

#: Files picked up when a folder is given; files named explicitly are always tried.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


def expand_inputs(inputs: Iterable[str], *, recursive: bool) -> list[str]:
    """Folders become their image files (sorted); URLs and file paths are kept as given.

    A path that does not exist is kept too, so it is reported as an error row, not silently dropped.
    """
    sources: list[str] = []
    for item in inputs:
        path = Path(item)
        if not is_url(item) and path.is_dir():
            pattern = "**/*" if recursive else "*"
            sources.extend(
                str(found)
                for found in sorted(path.glob(pattern))
                if found.suffix.lower() in IMAGE_SUFFIXES and found.is_file()
            )
        else:
            sources.append(item)
    return sources


def read_source(source: str, *, fetch: FetchPolicy) -> bytes:
    """The bytes of a file path or an http(s) URL."""
    if is_url(source):
        return fetch_url(source, fetch)
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise UnreadableInput(f"no such file: {source}") from None
    except IsADirectoryError:
        raise UnreadableInput(f"{source} is a directory") from None
    except OSError as exc:
        raise UnreadableInput(f"cannot read {source}: {exc.strerror or exc}") from None
