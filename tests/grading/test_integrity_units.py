"""The integrity re-run's secret seed, without kernels: how it is derived from the key, where
the key is kept, and that nothing of the re-run reaches what a learner sees."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path

import nbformat
import pytest

from grader import batch, pipeline
from grader.gradebook import SECRET_SEED, Gradebook, grade_key
from grader.grading.integrity import SEED_HIGH, SEED_LOW, derive_seed, key_digest, seed_in_range
from grader.grading.rubric import default_rubric_text
from grader.models import CellRun, Execution, Figure, Item, Variable
from grader.reports.feedback import gradescope_json
from grader.reports.learner_view import learner_view
from grader.reports.summary import Entry, gradebook_csv
from grader.submission import load
from reference import expected

SHA_A, SHA_B = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()


def test_the_seed_is_per_submission_and_per_key():
    seed = derive_seed("key-1", SHA_A)
    assert seed == derive_seed("key-1", SHA_A) == derive_seed("key-1", SHA_A.upper())
    assert SEED_LOW <= seed < SEED_HIGH
    assert derive_seed("key-1", SHA_B) != seed  # another notebook, another seed
    assert derive_seed("key-2", SHA_A) != seed  # another key, another seed
    seeds = {derive_seed("key-1", hashlib.sha256(bytes([i])).hexdigest()) for i in range(200)}
    assert len(seeds) == 200 and all(SEED_LOW <= s < SEED_HIGH for s in seeds)
    with pytest.raises(ValueError):
        derive_seed("", SHA_A)


def test_the_seed_is_never_the_labs_or_the_rubrics():
    span = SEED_HIGH - SEED_LOW
    assert seed_in_range(0) == SEED_LOW
    assert seed_in_range(span - 1) == SEED_HIGH - 1
    assert seed_in_range(span) == SEED_LOW  # wraps round
    assert seed_in_range(0, avoid={2}) == 3
    assert seed_in_range(span - 1, avoid={SEED_HIGH - 1}) == SEED_LOW  # steps over the top
    assert seed_in_range(3, avoid={5, 6, 7}) == 8
    assert derive_seed("k", SHA_A, avoid={derive_seed("k", SHA_A)}) != derive_seed("k", SHA_A)


def test_the_old_seed_option_is_the_key_now():
    options = pipeline.GradeOptions(integrity=True, secret_seed=918273)
    assert options.secret_key == "918273"
    assert "918273" not in repr(options)
    again = pipeline.GradeOptions.model_validate_json(options.model_dump_json())
    assert again.secret_key == "918273"  # it travels to Celery workers as before


def test_the_gradebook_keeps_the_key_where_the_seed_was(tmp_path, monkeypatch):
    monkeypatch.delenv(batch.SEED_ENV, raising=False)
    with Gradebook(tmp_path / "old.sqlite") as old:
        old.set_meta(SECRET_SEED, "918273")  # a gradebook from when this was the seed
        assert batch.secret_key(old) == "918273"
    with Gradebook(tmp_path / "new.sqlite") as new:
        key = batch.secret_key(new)
        assert len(key) == 64 and new.get_meta(SECRET_SEED) == key
        assert batch.secret_key(new) == key  # a resumed batch derives the same seeds
        monkeypatch.setenv(batch.SEED_ENV, "an instructor's key")
        assert batch.secret_key(new) == "an instructor's key"
    # the grade key names the integrity key by a digest only
    grade = grade_key(SHA_A, "rubric", "1.0", "918273")
    assert grade != grade_key(SHA_A, "rubric", "1.0", "918274")
    assert grade != grade_key(SHA_A, "rubric", "1.0", None)
    assert "918273" not in key_digest("918273")


def _execution(values: list[float], **extra) -> Execution:
    variable = Variable(name="LOSS20", type_name="list", values=values, length=len(values), cell=0)
    return Execution(
        fate="ok",
        sandbox="test",
        cells=[CellRun(index=0, status="ok", seconds=0.01)],
        variables={"LOSS20": variable},
        seconds=0.01,
        **extra,
    )


def _second_run(seed: int, follows: bool) -> Execution:
    """A re-run whose every learner-controlled field shouts its seed."""
    shout = f"the secret seed is {seed}"
    loss20 = expected(seed=seed)["LOSS20"] if follows else expected()["LOSS20"]
    run = _execution(loss20, notes=[shout], phases={shout: float(seed)})
    run.seconds = float(seed)
    run.cells.append(
        CellRun(
            index=1, status="error", error_name="ValueError", error_value=shout, traceback=shout
        )
    )
    run.variables[f"SEED_{seed}"] = Variable(
        name=f"SEED_{seed}", type_name="list", values=[float(seed)], length=1, cell=1
    )
    run.figures = [Figure.model_validate({"cell": 1, "axes": [{"title": shout}]})]
    return run


@pytest.mark.parametrize("follows", [True, False], ids=["computed", "hard-coded"])
def test_nothing_of_the_rerun_reaches_the_learner(monkeypatch, caplog, follows):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("pass")])
    submission = load(nbformat.writes(notebook).encode(), name="learner")
    # a key whose seed has ten digits: too long to turn up in a float by chance
    keys = (f"an instructor's key {i}" for i in range(1000))
    key = next(k for k in keys if derive_seed(k, submission.sha256, avoid={1}) >= 10**9)
    seed = derive_seed(key, submission.sha256, avoid={1})
    runs: list[int | None] = []
    rerun_seconds = 0.5

    async def fake_execute(nb, limits, *, seed_override=None, pool=None, reuse=True):
        runs.append(seed_override)
        if seed_override is None:
            return _execution(expected()["LOSS20"])
        await asyncio.sleep(rerun_seconds)  # the learner's code decides how long this takes
        return _second_run(seed_override, follows)

    monkeypatch.setattr(pipeline, "execute_async", fake_execute)
    options = pipeline.GradeOptions(integrity=True, secret_key=key)
    asyncio.run(pipeline.grade_submission(submission, options))  # warm the reference caches
    runs.clear()
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    result = asyncio.run(pipeline.grade_submission(submission, options))
    took = time.monotonic() - started

    assert runs == [None, seed]  # the re-run did happen, with this submission's seed
    assert took >= rerun_seconds > result.seconds  # the time shown is the first run's
    assert result.integrity == ("passed" if follows else "flagged")
    check = next(c for c in result.checks if c.id == "integrity.seed")
    assert check.passed is follows
    assert set(result.execution.variables) == {"LOSS20"}  # the first run's, nothing added
    shown = [
        result.model_dump_json(),
        json.dumps(gradescope_json(result)),
        gradebook_csv([Entry(Item("learner", "learner", Path("l"), "learner", ""), result)]),
        caplog.text,
    ]
    for text in shown:
        assert str(seed) not in text and key not in text
        assert "the secret seed is" not in text


def test_a_rerun_that_could_not_start_is_no_verdict(monkeypatch):
    async def fake_execute(nb, limits, *, seed_override=None, pool=None, reuse=True):
        if seed_override is None:
            return _execution(expected()["LOSS20"])
        return Execution(fate="not_started", sandbox="test", notes=[f"seed {seed_override}"])

    monkeypatch.setattr(pipeline, "execute_async", fake_execute)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("pass")])
    submission = load(nbformat.writes(notebook).encode(), name="learner")
    options = pipeline.GradeOptions(integrity=True, secret_key="k")
    with pytest.raises(OSError) as raised:
        asyncio.run(pipeline.grade_submission(submission, options))
    assert str(derive_seed("k", submission.sha256, avoid={1})) not in str(raised.value)
    assert "seed" not in str(raised.value).replace("secret-seed re-run", "")


@pytest.mark.parametrize("visibility", ["hidden", "visible"])
def test_the_literals_note_does_not_tell_the_reruns_verdict(monkeypatch, tmp_path, visibility):
    """LOSS20 typed in as literals and computed too (a printout pasted into a cell): the note on
    the LOSS20 check is there whatever the secret-seed re-run found, so a learner shown that
    check but not the re-run's reads the same either way (issue 22). The grade's own flag
    still defers to a re-run that passed."""
    want = expected()["LOSS20"]
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("LOSS20 = train(batch_size=20)"),
            nbformat.v4.new_code_cell(f"# what it printed: {want}"),
        ]
    )
    submission = load(nbformat.writes(notebook).encode(), name="learner")
    rubric = tmp_path / "rubric.toml"
    rubric.write_text(
        default_rubric_text()
        + '\n[[checks]]\nid = "integrity.seed"\ntitle = "Same code, secret seed"\npoints = 0\n'
        + f'visibility = "{visibility}"\n'
    )
    options = pipeline.GradeOptions(integrity=True, secret_key="k", rubric_path=str(rubric))

    def graded(follows: bool):
        async def fake_execute(nb, limits, *, seed_override=None, pool=None, reuse=True):
            if seed_override is None:
                return _execution(want)
            return _execution(expected(seed=seed_override)["LOSS20"] if follows else want)

        monkeypatch.setattr(pipeline, "execute_async", fake_execute)
        return asyncio.run(pipeline.grade_submission(submission, options))

    computed, typed_in = graded(follows=True), graded(follows=False)
    for result in (computed, typed_in):
        values = next(c for c in result.checks if c.id == "loss20.values")
        assert (
            values.passed and "Note: cell 1 spells these numbers out as literals" in values.message
        )
    assert computed.integrity == "passed" and computed.mistake != "hard_coded"
    assert typed_in.integrity == "flagged" and typed_in.mistake == "hard_coded"
    views = [learner_view(r).result for r in (computed, typed_in)]
    ignore = {"seconds", "execution"}
    if visibility == "hidden":
        assert views[0].model_dump(exclude=ignore) == views[1].model_dump(exclude=ignore)
    else:  # shown, the re-run's own check tells its verdict, as it should
        assert views[0].model_dump(exclude=ignore) != views[1].model_dump(exclude=ignore)
