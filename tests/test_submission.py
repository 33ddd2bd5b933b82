"""grader.submission.load: every upload becomes a clean v4 notebook or a specific SubmissionError.

The hypothesis tests feed random bytes, random JSON and mutated real notebooks; the contract is
that nothing but `Submission` or `SubmissionError` ever comes out.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import nbformat
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grader.submission import Submission, SubmissionError, load


def make_notebook() -> dict[str, Any]:
    """A small valid v4.5 notebook with outputs, as Jupyter would save it."""
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# Mini-batch"),
            nbformat.v4.new_code_cell(
                "import torch\nLOSS20 = [1.0, 2.0]\nprint(LOSS20)",
                execution_count=7,
                outputs=[nbformat.v4.new_output("stream", text="[1.0, 2.0]\n")],
            ),
            nbformat.v4.new_code_cell("LOSS20", execution_count=8),
        ]
    )
    nb.cells[1].metadata["execution"] = {"iopub.execute_input": "2024-01-01T00:00:00Z"}
    nb.metadata["kernelspec"] = {"name": "bash", "display_name": "Bash", "language": "bash"}
    return json.loads(nbformat.writes(nb))


def as_bytes(nb: dict[str, Any]) -> bytes:
    return json.dumps(nb, indent=1).encode()


def rejected(source: Any, **kwargs: Any) -> str:
    with pytest.raises(SubmissionError) as info:
        load(source, **kwargs)
    assert info.value.message == str(info.value)
    return info.value.message


def assert_clean(sub: Submission) -> None:
    nb = sub.notebook
    assert nb.nbformat == 4
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == []
        assert cell.execution_count is None
        assert isinstance(cell.source, str)
    assert nb.metadata.kernelspec.name == "python3"


# --- accepted -----------------------------------------------------------------------------


def test_valid_notebook_is_cleaned_and_hashed(tmp_path: Path) -> None:
    raw = as_bytes(make_notebook())
    path = tmp_path / "ada_lab.ipynb"
    path.write_bytes(raw)
    for source in (raw, raw.decode(), path, str(path), make_notebook()):
        sub = load(source)
        assert_clean(sub)
        assert sub.notebook.cells[1].source.startswith("import torch\nLOSS20")
        assert "execution" not in sub.notebook.cells[1].metadata
    assert load(path).name == "ada_lab"
    assert load(raw).sha256 == hashlib.sha256(raw).hexdigest()
    assert load(raw, name="learner-42").name == "learner-42"


def test_list_sources_are_joined_and_bom_accepted() -> None:
    nb = make_notebook()
    nb["cells"][1]["source"] = ["x = 1\n", "y = 2\n"]
    sub = load(b"\xef\xbb\xbf" + as_bytes(nb))
    assert sub.notebook.cells[1].source == "x = 1\ny = 2\n"


@pytest.mark.filterwarnings("error")
def test_nbformat3_is_converted_to_4() -> None:
    cell = nbformat.v3.new_code_cell(input="LOSS20 = []", prompt_number=3)
    cell.outputs = [nbformat.v3.new_output("stream", output_text="hi")]
    v3 = nbformat.v3.new_notebook(worksheets=[nbformat.v3.new_worksheet(cells=[cell])])
    sub = load(nbformat.v3.writes_json(v3).encode())
    assert_clean(sub)
    assert sub.notebook.cells[0].source == "LOSS20 = []"


@pytest.mark.filterwarnings("error")
def test_cell_ids_are_repaired_without_warnings() -> None:
    nb = make_notebook()
    for cell in nb["cells"]:
        cell.pop("id")
    assert [c.id for c in load(as_bytes(nb)).notebook.cells] == ["cell-0", "cell-1", "cell-2"]
    nb = make_notebook()
    nb["cells"][2]["id"] = nb["cells"][1]["id"]
    nb["cells"][0]["id"] = "not a valid id!"
    ids = [c.id for c in load(as_bytes(nb)).notebook.cells]
    assert len(set(ids)) == 3 and ids[1] == nb["cells"][1]["id"]
    nb["nbformat_minor"] = 4  # ids do not exist before 4.5
    assert all("id" not in c for c in load(as_bytes(nb)).notebook.cells)


# --- rejected, each with its own message ------------------------------------------------


def test_size_cap_is_checked_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.ipynb"
    with big.open("wb") as handle:  # sparse: the size is known without writing 50 MB
        handle.truncate(50 * 2**20)
    assert "too large" in rejected(big)
    assert "too large" in rejected(as_bytes(make_notebook()), max_bytes=100)


def test_zip_binary_utf8_and_json_errors() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("lab.ipynb", as_bytes(make_notebook()))
    assert "this is a zip file, not a notebook" in rejected(buffer.getvalue())
    assert "NUL byte at byte 2" in rejected(b'{"\x00')
    assert "at byte 14" in rejected(b'{"nbformat": 4\xff}')
    message = rejected(b'{\n  "nbformat": 4,\n  "cells" []\n}')
    assert "line 3, column 11" in message
    assert "Python code" in rejected(b"import torch\nprint(1)\n")
    assert "empty" in rejected(b"  \n")


def test_json_that_is_not_a_notebook() -> None:
    assert "not a notebook" in rejected(b"[1, 2, 3]")
    assert "no 'cells' and no 'nbformat'" in rejected(b'{"hello": "world"}')
    assert "no 'nbformat'" in rejected(b'{"cells": []}')
    assert "nbformat 2" in rejected(b'{"nbformat": 2, "nbformat_minor": 0}')
    assert "nbformat 5" in rejected(b'{"nbformat": 5, "cells": []}')
    assert "whole numbers" in rejected(b'{"nbformat": "4", "cells": []}')


def test_cells_and_sources() -> None:
    nb = make_notebook()
    nb["cells"] = [nb["cells"][0]]
    assert rejected(as_bytes(nb)) == "the notebook has no code cells, so there is nothing to grade"
    for source, kind in ((42, "number"), ({"a": 1}, "JSON object"), (None, "null")):
        nb = make_notebook()
        nb["cells"][1]["source"] = source
        assert f"cell 2 (code): its source is a {kind}, not text" == rejected(as_bytes(nb))
    nb = make_notebook()
    nb["cells"][2]["source"] = ["x = 1\n", 3]
    assert "cell 3 (code): its source lines must all be text" in rejected(as_bytes(nb))
    nb = make_notebook()
    for cell in nb["cells"][1:]:
        cell["source"] = "  \n"
    assert "empty" in rejected(as_bytes(nb))
    nb = make_notebook()
    nb["cells"] = nb["cells"] * 20
    assert "more than the 10 allowed" in rejected(as_bytes(nb), max_cells=10)


def test_invalid_schema_names_the_place() -> None:
    nb = make_notebook()
    nb["cells"][1]["cell_type"] = "kode"
    assert rejected(as_bytes(nb)).startswith(
        'cell 2 has the cell type "kode", which is no notebook cell: a cell is code, markdown '
        "or raw; change that cell's type in Jupyter"
    )
    nb = make_notebook()
    nb["metadata"] = 3
    message = rejected(as_bytes(nb))
    assert "at 'metadata'" in message and message.endswith("upload the saved .ipynb file")
    nb = make_notebook()
    nb["cells"][2]["metadata"] = ["tags"]
    assert "at 'cells[2].metadata'" in rejected(as_bytes(nb))
    nb = make_notebook()
    nb["nbformat_minor"] = -1
    assert "'nbformat_minor' is -1, but versions start at 0" in rejected(as_bytes(nb))


def _markdown_outputs(nb: dict[str, Any]) -> None:  # the real 2024 copy of the lab
    nb["cells"][0]["outputs"] = []


def _markdown_execution_count(nb: dict[str, Any]) -> None:
    nb["cells"][0]["execution_count"] = None
    nb["cells"][0]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x"}]


def _no_cell_metadata(nb: dict[str, Any]) -> None:
    for cell in nb["cells"]:
        del cell["metadata"]
    nb["cells"][1]["metadata"] = None


def _no_notebook_metadata(nb: dict[str, Any]) -> None:
    del nb["metadata"]


def _ids_missing_duplicated_and_not_text(nb: dict[str, Any]) -> None:
    del nb["cells"][0]["id"]
    nb["cells"][1]["id"] = 5
    nb["cells"][2]["id"] = "same"
    nb["cells"].append(copy.deepcopy(nb["cells"][2]))


def _source_lists_and_missing_source(nb: dict[str, Any]) -> None:
    nb["cells"][0]["source"] = ["# Mini", "-batch\n"]
    nb["cells"][2]["source"] = ["LOSS", "20"]
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "id": "no-source"})


def _nbformat_4_0(nb: dict[str, Any]) -> None:
    nb["nbformat_minor"] = 0  # 4.0 has no ids: they are dropped, not rejected


def _nbformat_4_9(nb: dict[str, Any]) -> None:
    nb["nbformat_minor"] = 9  # a minor version from the future
    nb["cells"][0]["outputs"] = []


def _unknown_keys(nb: dict[str, Any]) -> None:
    nb["worksheets"] = []
    nb["metadata"]["colab"] = {"provenance": [], "toc_visible": True}
    nb["metadata"]["vscode"] = {"interpreter": {"hash": "abc"}}
    nb["cells"][1]["attachments"] = {}
    nb["cells"][1]["editable"] = True
    nb["cells"][0]["attachments"] = {"a.png": 5}  # pictures are never run: dropped


def _invalid_metadata_values(nb: dict[str, Any]) -> None:
    nb["metadata"]["kernelspec"] = {"name": "python3"}  # no display_name
    nb["metadata"]["language_info"] = {"version": "3.11"}  # no name
    nb["cells"][1]["metadata"]["tags"] = "graded"
    nb["cells"][2]["metadata"]["collapsed"] = "yes"


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(
    "deviate",
    [
        _markdown_outputs,
        _markdown_execution_count,
        _no_cell_metadata,
        _no_notebook_metadata,
        _ids_missing_duplicated_and_not_text,
        _source_lists_and_missing_source,
        _nbformat_4_0,
        _nbformat_4_9,
        _unknown_keys,
        _invalid_metadata_values,
    ],
)
def test_harmless_schema_deviations_are_repaired(deviate: Any) -> None:
    """What editors leave in real learners' notebooks costs no grade: the code is kept as it
    is, what the schema does not allow is dropped or filled in, the result is valid."""
    nb = make_notebook()
    deviate(nb)
    sub = load(as_bytes(nb))
    assert_clean(sub)
    again = load(as_bytes(nb))
    assert again.notebook == sub.notebook  # the repair is the same every time
    cells = sub.notebook.cells
    assert [c.cell_type for c in cells[:3]] == ["markdown", "code", "code"]
    assert cells[1].source == "import torch\nLOSS20 = [1.0, 2.0]\nprint(LOSS20)"
    assert cells[2].source == "LOSS20"
    for cell in cells:
        assert isinstance(cell.metadata, dict)
        assert isinstance(cell.source, str)
        if cell.cell_type != "code":
            assert not {"outputs", "execution_count", "attachments"} & set(cell)
        assert "attachments" not in cell and "editable" not in cell
    assert set(sub.notebook) == {"cells", "metadata", "nbformat", "nbformat_minor"}
    if sub.notebook.nbformat_minor >= 5:
        ids = [c.id for c in cells]
        assert len(set(ids)) == len(ids)


def test_metadata_repair_keeps_what_is_valid() -> None:
    nb = make_notebook()
    _invalid_metadata_values(nb)
    nb["metadata"]["colab"] = {"provenance": []}
    nb["cells"][1]["metadata"]["jupyter"] = {"source_hidden": True}
    meta = load(as_bytes(nb)).notebook.metadata
    assert "language_info" not in meta and meta.colab == {"provenance": []}
    assert meta.kernelspec.name == "python3"
    cell_meta = load(as_bytes(nb)).notebook.cells[1].metadata
    assert "tags" not in cell_meta and cell_meta.jupyter == {"source_hidden": True}


def test_nesting_and_paths(tmp_path: Path) -> None:
    assert "nested" in rejected(b"[" * 200_000)
    nb = make_notebook()
    deep: Any = 1
    for _ in range(150):
        deep = {"d": deep}
    nb["metadata"]["deep"] = deep
    assert "nested more than" in rejected(as_bytes(nb))
    assert "no such file" in rejected(tmp_path / "missing.ipynb")
    assert "folder" in rejected(tmp_path)
    fifo = tmp_path / "pipe.ipynb"
    os.mkfifo(fifo)  # opening it for reading would block forever
    assert "not a regular file" in rejected(fifo)
    assert "not a regular file" in rejected("/dev/zero")
    assert "expected notebook bytes" in rejected(42)
    assert "not plain JSON" in rejected({"cells": {1, 2}})


# --- fuzzing: only Submission or SubmissionError, ever ----------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
)
json_value = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
NOTEBOOK_KEYS = [
    "cells",
    "nbformat",
    "nbformat_minor",
    "metadata",
    "cell_type",
    "source",
    "outputs",
    "execution_count",
    "id",
    "worksheets",
    "input",
]


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a container inside a JSON value (the value itself included)."""
    if not isinstance(value, dict | list):
        return []
    found = [prefix]
    children = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in children:
        found.extend(paths(child, (*prefix, key)))
    return found


def at(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


@st.composite
def mutated_notebooks(draw: st.DrawFn) -> dict[str, Any]:
    nb = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        target = at(nb, draw(st.sampled_from(paths(nb))))
        action = draw(st.sampled_from(["drop", "set", "huge", "nest", "junk_key"]))
        if isinstance(target, dict):
            key: Any = draw(st.sampled_from(sorted(target) or NOTEBOOK_KEYS))
        elif target:
            key = draw(st.integers(0, len(target) - 1))
        else:
            continue
        if action == "drop":
            target.pop(key, None) if isinstance(target, dict) else target.pop(key)
        elif action == "set":
            target[key] = draw(json_value)
        elif action == "huge":
            target[key] = "x" * draw(st.integers(10_000, 300_000))
        elif action == "nest":
            depth = draw(st.integers(1, 400))
            value: Any = draw(json_leaf)
            for _ in range(depth):
                value = [value]
            target[key] = value
        elif isinstance(target, dict):
            target[draw(st.sampled_from(NOTEBOOK_KEYS))] = draw(json_value)
    return nb


BASES = [make_notebook()]
_v3 = nbformat.v3.new_notebook(
    worksheets=[nbformat.v3.new_worksheet(cells=[nbformat.v3.new_code_cell(input="x = 1")])]
)
BASES.append(json.loads(nbformat.v3.writes_json(_v3)))

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def only_submission_or_error(source: Any) -> None:
    try:
        sub = load(source)
    except SubmissionError as exc:
        assert exc.message.strip()
    else:
        assert isinstance(sub, Submission)
        assert_clean(sub)


@FUZZ
@given(mutated_notebooks())
def test_fuzz_mutated_notebooks(nb: dict[str, Any]) -> None:
    only_submission_or_error(json.dumps(nb).encode())
    only_submission_or_error(nb)


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(raw: bytes) -> None:
    only_submission_or_error(raw)


@FUZZ
@given(mutated_notebooks(), st.data())
def test_fuzz_corrupted_bytes(nb: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(json.dumps(nb).encode())
    for _ in range(data.draw(st.integers(1, 5))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    only_submission_or_error(bytes(raw))
    only_submission_or_error(bytes(raw[: data.draw(st.integers(0, len(raw)))]))


@FUZZ
@given(json_value)
def test_fuzz_random_json(value: Any) -> None:
    only_submission_or_error(json.dumps(value).encode())
    only_submission_or_error(json.dumps({"nbformat": 4, "nbformat_minor": 5, "cells": value}))
