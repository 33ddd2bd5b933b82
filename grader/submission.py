"""Turn whatever a learner uploaded into a clean nbformat-4 notebook, or say why it is not one.

This is the first stage of the pipeline and the only one that sees raw uploads, so it trusts
nothing: sizes are checked before reading, every parse step is guarded, and the only exception
that ever leaves `load` is `SubmissionError`, whose message a learner can act on.

A `str` source is a path unless it looks like notebook text (starts with ``{`` after
whitespace, or is too long or multi-line to be a path). Stored outputs and execution counts are
dropped (the grader runs the notebook itself), and the kernelspec is set to Python 3 so that a
notebook cannot pick which kernel the runner starts.

Harmless deviations from the nbformat 4 schema that editors leave in real notebooks are
repaired, not rejected (`_repair`, `_fix_cell_ids`, and nbformat's own `normalize` for
metadata values the schema does not allow): keys a cell of its type must not have, a missing
`metadata` or `source`, missing, malformed or duplicated cell ids, unknown top-level keys.
What is still not a notebook after that is refused, with the place named.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from nbformat.validator import ValidationError

from grader.errors import Refused

DEFAULT_MAX_BYTES = 10 * 2**20
DEFAULT_MAX_CELLS = 2000
MAX_DEPTH = 100  # real notebooks nest < 15 levels; deep nesting is a parser attack
_PATH_MAX = 4096
_CELL_ID = re.compile(r"[a-zA-Z0-9-_]{1,64}")
_KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
_CELL_TYPES = {
    3: frozenset({"code", "markdown", "raw", "heading"}),
    4: frozenset({"code", "markdown", "raw"}),
}
_TOP_KEYS = frozenset({"cells", "metadata", "nbformat", "nbformat_minor"})
_CELL_KEYS = {  # what nbformat 4's schema allows on each type of cell, less `attachments`
    "code": frozenset({"id", "cell_type", "metadata", "source", "outputs", "execution_count"}),
    "markdown": frozenset({"id", "cell_type", "metadata", "source"}),
    "raw": frozenset({"id", "cell_type", "metadata", "source"}),
}
_MAGIC = (  # leading bytes of common non-notebook uploads
    (b"PK\x03\x04", "a zip file"),
    (b"PK\x05\x06", "an (empty) zip file"),
    (b"\x1f\x8b", "a gzip file"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\xd0\xcf\x11\xe0", "an old Microsoft Office document"),
    (b"\x7fELF", "a program (ELF binary)"),
)


class SubmissionError(Refused):
    """The upload is not a gradable notebook; `message` says why, for a learner."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Submission:
    name: str  # display name (file stem unless given)
    notebook: nbformat.NotebookNode  # v4, outputs stripped, execution counts cleared
    sha256: str  # of the raw bytes


def load(
    source: bytes | str | os.PathLike | dict,
    name: str | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_cells: int = DEFAULT_MAX_CELLS,
) -> Submission:
    """Read, check and clean one notebook; raise `SubmissionError` if it is not one."""
    try:
        raw, stem = _read_source(source, max_bytes)
        notebook = _parse(raw, max_cells)
    except SubmissionError:
        raise
    except RecursionError as exc:
        raise SubmissionError("the notebook's JSON is nested too deeply to be a notebook") from exc
    except Exception as exc:  # any other failure is still the upload's fault
        raise SubmissionError(
            f"the notebook could not be read ({type(exc).__name__}); open it in Jupyter, "
            "save it, and upload the saved .ipynb file"
        ) from exc
    return Submission(
        name=name if name is not None else stem,
        notebook=notebook,
        sha256=hashlib.sha256(raw).hexdigest(),
    )


# --- notebook files ------------------------------------------------------------------------

SKIP_DIRS = frozenset({".ipynb_checkpoints", "__pycache__", "__MACOSX"})


def notebooks_under(folder: Path) -> list[Path]:
    """Every notebook in `folder` and its subfolders: the rule of every door that takes folders.

    A notebook is a regular file named `*.ipynb`. Hidden files and folders (a leading "."),
    `__pycache__` and `__MACOSX` are skipped, and symbolic links, to files or to folders, are
    not followed: a link in a class folder may point anywhere. (A path given by name is the
    caller's to take as it is.) Order: a folder's notebooks by name, then its subfolders by
    name, so the same folder always gives the same list.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if name.endswith(".ipynb") and not name.startswith(".") and _regular(path):
                found.append(path)
    return found


def shown_name(name: str) -> str:
    """A file name, or a path relative to a folder, as text that every encoder takes (UTF-8,
    JSON, SQLite, HTML, a console): its bytes that are not UTF-8, which `os.walk` hands over
    as lone surrogates, are spelled `\\xNN` (b"caf\\xe9" is `caf\\xe9`). A UTF-8 name is kept
    as it is. The same name always gives the same text, and two names two texts (unless one
    of them spells such a backslash out itself: the batch numbers repeats, as it does for the
    same relative path under two folders)."""
    try:
        raw = os.fsencode(name)
    except UnicodeEncodeError:  # a lone surrogate that is no byte of a file name
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def read_capped(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """A notebook file's bytes, at most one byte past the cap: `load` then rejects an
    oversized file instead of parsing a truncated one."""
    with Path(path).open("rb") as handle:
        return handle.read(max_bytes + 1)


# --- reading bytes -------------------------------------------------------------------------


def _read_source(source: Any, max_bytes: int) -> tuple[bytes, str]:
    """The raw bytes and a default display name, with the size cap applied before reading."""
    if isinstance(source, dict):
        try:
            raw = json.dumps(source, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise SubmissionError(f"the notebook object is not plain JSON data: {exc}") from exc
        return _capped(raw, max_bytes), "submission"
    if isinstance(source, bytes | bytearray | memoryview):
        return _capped(bytes(source), max_bytes), "submission"
    if isinstance(source, str) and _looks_like_text(source):
        return _capped(source.encode("utf-8", errors="surrogatepass"), max_bytes), "submission"
    if isinstance(source, str | os.PathLike):
        return _read_path(Path(source), max_bytes)
    raise SubmissionError(
        f"expected notebook bytes, text, a path or a dict, got {type(source).__name__}"
    )


def _looks_like_text(source: str) -> bool:
    return (
        source.lstrip().startswith("{")
        or len(source) > _PATH_MAX
        or "\n" in source
        or "\x00" in source
    )


def _capped(raw: bytes, max_bytes: int) -> bytes:
    if len(raw) > max_bytes:
        raise SubmissionError(_too_big(len(raw), max_bytes))
    return raw


def _too_big(size: int | None, max_bytes: int) -> str:
    size_text = "more than" if size is None else f"{size / 2**20:.1f} MB, more than"
    return (
        f"the notebook is too large ({size_text} the {max_bytes / 2**20:.0f} MB limit); "
        "clear all outputs (Kernel > Restart & Clear Output), save, and upload again"
    )


def _read_path(path: Path, max_bytes: int) -> tuple[bytes, str]:
    stem = path.stem or path.name or "submission"
    try:
        if path.is_dir():
            raise SubmissionError(f"{path.name or path} is a folder, not a notebook file")
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
            raise SubmissionError(f"{path.name or path} is not a regular file")
        size = info.st_size
        if size > max_bytes:
            raise SubmissionError(_too_big(size, max_bytes))
        with path.open("rb") as handle:
            raw = handle.read(max_bytes + 1)  # files can grow, /dev files report size 0
    except FileNotFoundError as exc:
        raise SubmissionError(f"no such file: {path}") from exc
    except PermissionError as exc:
        raise SubmissionError(f"the file cannot be read (permission denied): {path}") from exc
    except OSError as exc:
        raise SubmissionError(f"the file cannot be read: {exc.strerror or exc}") from exc
    if len(raw) > max_bytes:
        raise SubmissionError(_too_big(None, max_bytes))
    return raw, stem


# --- bytes to JSON -------------------------------------------------------------------------


def _decode(raw: bytes) -> str:
    if not raw.strip():
        raise SubmissionError("the file is empty: save the notebook in Jupyter and upload it")
    for magic, kind in _MAGIC:
        if raw.startswith(magic):
            hint = " (unzip it and upload the .ipynb inside)" if "zip" in kind else ""
            raise SubmissionError(f"this is {kind}, not a notebook{hint}")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SubmissionError("the file is UTF-16 text; notebooks are UTF-8: save it as UTF-8")
    if b"\x00" in raw:
        at = raw.index(b"\x00")
        raise SubmissionError(
            f"this is a binary file, not a notebook (it contains a NUL byte at byte {at})"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SubmissionError(
            f"the file is not valid UTF-8 text (invalid byte 0x{raw[exc.start]:02x} at byte "
            f"{exc.start}); notebooks are UTF-8 JSON"
        ) from exc


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        hint = ""
        head = text.lstrip()[:200]
        if head.startswith(("import ", "from ", "#", "def ", "print(")):
            hint = " It looks like Python code: download the notebook as .ipynb, not as .py."
        raise SubmissionError(
            f"the file is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            f"a notebook file is JSON.{hint}"
        ) from exc


def _check_depth(value: Any) -> None:
    """Iteratively reject absurd nesting before recursive code (nbformat, pydantic) sees it."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SubmissionError(
                f"the notebook's JSON is nested more than {MAX_DEPTH} levels deep; "
                "this is not a notebook Jupyter wrote"
            )
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


# --- JSON to notebook ----------------------------------------------------------------------


def _parse(raw: bytes, max_cells: int) -> nbformat.NotebookNode:
    data = _parse_json(_decode(raw))
    _check_depth(data)
    if not isinstance(data, dict):
        raise SubmissionError(
            f"the file is JSON but not a notebook: it holds a {_kind(data)}, not an object "
            "with 'cells'"
        )
    major, minor = _version(data)
    cells = _cells(data, major)
    if len(cells) > max_cells:
        raise SubmissionError(
            f"the notebook has {len(cells)} cells, more than the {max_cells} allowed"
        )
    _check_cells(cells, major)
    _strip_outputs(cells, major)
    notebook = nbformat.from_dict(data)
    for cell in _cells(notebook, major):
        for key in ("source", "input"):
            if isinstance(cell.get(key), list):
                cell[key] = "".join(cell[key])
    if major == 3:
        notebook = nbformat.convert(notebook, 4)
        minor = notebook.get("nbformat_minor", 0)
    _repair(notebook)
    _fix_cell_ids(notebook.cells, minor)
    notebook = _validated(notebook, major)
    _finish(notebook)
    return notebook


def _kind(value: Any) -> str:
    names = {
        dict: "JSON object",
        list: "list",
        str: "string",
        bool: "true/false value",
        type(None): "null",
    }
    return names.get(type(value), "number")


def _version(data: dict) -> tuple[int, int]:
    if "nbformat" not in data:
        if "cells" in data:
            raise SubmissionError(
                "the file has 'cells' but no 'nbformat' version, so it is not a notebook "
                "Jupyter wrote; open it in Jupyter, save it, and upload again"
            )
        raise SubmissionError(
            "the file is JSON but not a Jupyter notebook (it has no 'cells' and no 'nbformat')"
        )
    major, minor = data["nbformat"], data.get("nbformat_minor", 0)
    if type(major) is not int or type(minor) is not int:
        raise SubmissionError(
            "the notebook's 'nbformat' / 'nbformat_minor' version must be whole numbers, got "
            f"{json.dumps(major)[:20]} / {json.dumps(minor)[:20]}"
        )
    if minor < 0:
        raise SubmissionError(
            f"the notebook's 'nbformat_minor' is {minor}, but versions start at 0; open it in "
            "Jupyter, save it, and upload the saved .ipynb file"
        )
    if major < 3:
        raise SubmissionError(
            f"the notebook is in the old nbformat {major}; open it in Jupyter and save it "
            "again, which converts it to nbformat 4"
        )
    if major > 4:
        raise SubmissionError(
            f"the notebook claims nbformat {major}, which does not exist yet; the grader reads "
            "nbformat 3 and 4"
        )
    return major, minor


def _cells(data: dict, major: int) -> list:
    """The cell list (v4 `cells`, or every v3 worksheet's `cells`), checked to be a list."""
    if major == 4:
        cells = data.get("cells")
        if not isinstance(cells, list):
            raise SubmissionError("the notebook has no 'cells' list, so there is nothing to run")
        return cells
    worksheets = data.get("worksheets")
    if not isinstance(worksheets, list) or not all(isinstance(w, dict) for w in worksheets):
        raise SubmissionError("the nbformat 3 notebook has no valid 'worksheets' list")
    all_cells: list = []
    for worksheet in worksheets:
        sheet_cells = worksheet.get("cells", [])
        if not isinstance(sheet_cells, list):
            raise SubmissionError("an nbformat 3 worksheet's 'cells' is not a list")
        all_cells.extend(sheet_cells)
    return all_cells


def _check_cells(cells: list, major: int) -> None:
    code_cells = 0
    for number, cell in enumerate(cells, start=1):
        if not isinstance(cell, dict):
            raise SubmissionError(f"cell {number} is a {_kind(cell)}, not a cell")
        cell_type = cell.get("cell_type")
        if not isinstance(cell_type, str):
            raise SubmissionError(f"cell {number} has no 'cell_type'")
        if cell_type not in _CELL_TYPES[major]:
            raise SubmissionError(
                f"cell {number} has the cell type {json.dumps(cell_type)[:40]}, which is no "
                "notebook cell: a cell is code, markdown or raw; change that cell's type in "
                "Jupyter, save, and upload again"
            )
        key = "input" if major == 3 and cell_type == "code" else "source"
        source = cell.get(key, "")
        if isinstance(source, list):
            bad = [line for line in source if not isinstance(line, str)]
            if bad:
                raise SubmissionError(
                    f"cell {number} ({cell_type}): its source lines must all be text, but one "
                    f"is a {_kind(bad[0])}"
                )
        elif not isinstance(source, str):
            raise SubmissionError(
                f"cell {number} ({cell_type}): its source is a {_kind(source)}, not text"
            )
        if cell_type == "code":
            code_cells += 1
    if code_cells == 0:
        raise SubmissionError("the notebook has no code cells, so there is nothing to grade")


def _strip_outputs(cells: list, major: int) -> None:
    """Drop stored results before conversion: the grader runs the notebook itself."""
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        cell["outputs"] = []
        if major == 3:
            cell.pop("prompt_number", None)
        else:
            cell["execution_count"] = None
        metadata = cell.get("metadata")
        if isinstance(metadata, dict):
            metadata.pop("execution", None)


def _fix_cell_ids(cells: list, minor: int) -> None:
    """Cell ids as nbformat 4.5+ requires (unique, well-formed), none before 4.5.

    Done here rather than by `nbformat.validator.normalize`, which warns (an error under
    `-W error`), so that no process-global warning filter has to be touched.
    """
    seen: set[str] = set()
    for number, cell in enumerate(cells):
        if not isinstance(cell, dict):
            continue
        if minor < 5:
            cell.pop("id", None)
            continue
        cell_id = cell.get("id")
        if not isinstance(cell_id, str) or not _CELL_ID.fullmatch(cell_id) or cell_id in seen:
            cell_id = f"cell-{number}"
            while cell_id in seen:
                cell_id += "-x"
            cell["id"] = cell_id
        seen.add(cell_id)


def _repair(notebook: nbformat.NotebookNode) -> None:
    """Undo the harmless deviations from the nbformat 4 schema that editors leave behind.

    Real learners' notebooks pass through many editors, some of which write keys a cell of
    that type must not have (`outputs` or `execution_count` on a markdown cell), leave
    `metadata` or a markdown cell's `source` out, or add keys of their own. None of that
    changes what runs, so it is repaired rather than costing a learner the grade: keys the
    schema does not allow are dropped (at the top level and on each cell, by its type), a
    missing or null `metadata` becomes `{}`, a missing `source` the empty text, and
    `attachments` (pictures in markdown, never run or shown by the grader) are dropped. The
    kernelspec is pinned here already, so a partial one from the learner's editor does not
    fail validation. What is left for `_validated` is what is not a notebook (a `metadata`
    that is a number or a list, on the notebook or on a cell).
    """
    for key in [k for k in notebook if k not in _TOP_KEYS]:
        del notebook[key]
    if notebook.get("metadata") is None:
        notebook["metadata"] = nbformat.NotebookNode()
    if isinstance(notebook.metadata, dict):
        notebook.metadata["kernelspec"] = nbformat.from_dict(copy.deepcopy(_KERNELSPEC))
    for cell in notebook.cells:
        allowed = _CELL_KEYS.get(cell.get("cell_type"))
        if allowed is None:  # not a cell; validation names it
            continue
        for key in [k for k in cell if k not in allowed]:
            del cell[key]
        if cell.get("metadata") is None:
            cell["metadata"] = nbformat.NotebookNode()
        cell.setdefault("source", "")


def _validated(notebook: nbformat.NotebookNode, major: int) -> nbformat.NotebookNode:
    """The notebook if it is valid nbformat 4, else with nbformat's own repair of metadata
    (`normalize(strip_invalid_metadata=True)`: the top-level or cell metadata keys whose
    values the schema does not allow, e.g. a `language_info` without `name` or `tags` that are
    not a list, are dropped; metadata never changes what runs), else `SubmissionError`.

    The cell ids are well-formed and unique already (`_fix_cell_ids`), so `normalize` neither
    warns nor invents random ids.
    """
    try:
        nbformat.validate(notebook)
        return notebook
    except ValidationError:
        pass
    _changes, repaired = nbformat.validator.normalize(notebook, strip_invalid_metadata=True)
    repaired = nbformat.from_dict(repaired)
    try:
        nbformat.validate(repaired)
    except ValidationError as exc:
        raise SubmissionError(_validation_message(exc, major)) from exc
    return repaired


def _validation_message(exc: ValidationError, major: int) -> str:
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
    detail = exc.message if len(exc.message) <= 200 else exc.message[:200] + "..."
    converted = " after converting it from nbformat 3" if major == 3 else ""
    return (
        f"the notebook is not a valid nbformat 4 notebook{converted}: at "
        f"'{where.lstrip('.') or 'top level'}': {detail}; open it in Jupyter, save it, and "
        "upload the saved .ipynb file"
    )


def _finish(notebook: nbformat.NotebookNode) -> None:
    """Pin the kernel and make sure nothing from the learner's last run survives."""
    notebook.metadata["kernelspec"] = copy.deepcopy(_KERNELSPEC)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    if not any(c.source.strip() for c in notebook.cells if c.cell_type == "code"):
        raise SubmissionError(
            "every code cell in the notebook is empty, so there is nothing to run"
        )
