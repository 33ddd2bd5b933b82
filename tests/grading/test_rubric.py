"""Reading the instructor's rubric (`grader.grading.rubric`): the default one, and every file
it refuses, each with a message that names the key at fault."""

from __future__ import annotations

import re

import pytest

from grader.grading.rubric import (
    KNOWN_CHECKS,
    RubricError,
    default_rubric_text,
    load_rubric,
    parse_rubric,
)
from tests.helpers import ROOT

ANSWER = '[answer]\naliases = ["LOSS20"]\n'
CHECK = '[[checks]]\nid = "loss20.values"\ntitle = "Values"\npoints = 5\n'
MINIMAL = 'name = "r"\n' + ANSWER + CHECK


def test_the_default_rubric():
    rubric = load_rubric()
    assert rubric.name == "mini-batch-gd"
    assert rubric.max_score == sum(c.points for c in rubric.checks) > 0
    assert re.fullmatch(r"[0-9a-f]{16}", rubric.fingerprint)
    assert rubric == parse_rubric(default_rubric_text())
    on_disk = ROOT / "grader" / "grading" / "default_rubric.toml"
    assert load_rubric(on_disk) == rubric  # the file shipped is the file in the checkout


def test_a_minimal_rubric_takes_the_defaults():
    rubric = parse_rubric(MINIMAL)
    default = load_rubric().answer
    assert (rubric.answer.epochs, rubric.answer.seed) == (default.epochs, default.seed)
    assert (rubric.answer.rtol, rubric.answer.atol) == (default.rtol, default.atol)
    assert rubric.max_score == 5 and rubric.check("loss20.values").title == "Values"
    assert rubric.check("plot.legend") is None


def test_the_fingerprint_follows_what_grades_depend_on():
    base = parse_rubric(MINIMAL).fingerprint
    assert parse_rubric(MINIMAL).fingerprint == base
    # layout and comments do not change a grade
    assert parse_rubric("# a note\n" + MINIMAL + "\n\n").fingerprint == base
    # points, titles and each check's visibility do (stored grades carry the visibility)
    assert parse_rubric(MINIMAL.replace("points = 5", "points = 4")).fingerprint != base
    assert parse_rubric(MINIMAL.replace('"Values"', '"Numbers"')).fingerprint != base
    hidden = parse_rubric(MINIMAL + 'visibility = "hidden"\n').fingerprint
    assert hidden != base
    assert parse_rubric(MINIMAL + 'visibility = "visible"\n').fingerprint != hidden
    # releasing checks to learners redraws their pages; it does not make grades stale
    released = MINIMAL + 'visibility = "hidden"\n[release]\nafter_published = true\n'
    assert parse_rubric(released).fingerprint == hidden


def test_integrity_adds_one_zero_point_check_once():
    rubric = parse_rubric(MINIMAL)
    once = rubric.with_integrity()
    assert [c.id for c in once.checks] == ["loss20.values", "integrity.seed"]
    assert once.max_score == rubric.max_score
    assert once.with_integrity() is once
    assert [c.id for c in rubric.checks] == ["loss20.values"]  # the original is unchanged


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("this is = = not toml", "rubric is not valid TOML: "),
        (
            MINIMAL.replace("loss20.values", "plot.colour"),
            "checks.0.id: Value error, unknown check id 'plot.colour'; known: "
            + ", ".join(KNOWN_CHECKS),
        ),
        (
            MINIMAL.replace("points = 5", "points = -1"),
            "checks.0.points: Input should be greater than or equal to 0",
        ),
        (
            MINIMAL.replace("points = 5", 'points = "five"'),
            "checks.0.points: Input should be a valid number",
        ),
        (
            MINIMAL.replace(ANSWER, ANSWER + "rtol = 0\n"),
            "answer.rtol: Input should be greater than 0",
        ),
        (
            MINIMAL.replace(ANSWER, ANSWER + "rtol = 1.5\n"),
            "answer.rtol: Input should be less than 1",
        ),
        (
            MINIMAL.replace(ANSWER, ANSWER + "atol = -1e-9\n"),
            "answer.atol: Input should be greater than or equal to 0",
        ),
        (
            MINIMAL.replace(ANSWER, ANSWER + "epochs = 0\n"),
            "answer.epochs: Input should be greater than or equal to 1",
        ),
        (
            MINIMAL.replace(ANSWER, ANSWER + "epochs = 1001\n"),
            "answer.epochs: Input should be less than or equal to 1000",
        ),
        (MINIMAL.replace('["LOSS20"]', "[]"), "answer.aliases: List should have at least 1 item"),
        (MINIMAL.replace(ANSWER, ""), "answer: Field required"),
        (MINIMAL.replace('name = "r"\n', ""), "name: Field required"),
        (MINIMAL.replace(CHECK, ""), "checks: Field required"),
        ('name = "r"\nchecks = []\n' + ANSWER, "checks: List should have at least 1 item"),
        (MINIMAL.replace('title = "Values"\n', ""), "checks.0.title: Field required"),
        (MINIMAL + CHECK, "rubric lists a check id twice"),
    ],
    ids=[
        "bad_toml",
        "unknown_check",
        "negative_points",
        "points_not_a_number",
        "zero_rtol",
        "rtol_not_relative",
        "negative_atol",
        "zero_epochs",
        "too_many_epochs",
        "no_aliases",
        "no_answer_table",
        "no_name",
        "no_checks",
        "empty_checks",
        "check_without_title",
        "duplicate_check",
    ],
)
def test_an_unusable_rubric_is_refused_saying_why(text, message):
    with pytest.raises(RubricError) as refused:
        parse_rubric(text)
    assert message in str(refused.value)


def test_the_usable_prefix_says_what_kind_of_problem_it_is():
    with pytest.raises(RubricError, match=r"^rubric is not usable: checks\.0\.points: "):
        parse_rubric(MINIMAL.replace("points = 5", "points = -1"))


def test_every_problem_of_a_file_is_listed_at_once():
    broken = MINIMAL.replace("points = 5", "points = -1").replace('["LOSS20"]', "[]")
    with pytest.raises(RubricError) as refused:
        parse_rubric(broken)
    assert "answer.aliases:" in str(refused.value) and "checks.0.points:" in str(refused.value)


def test_a_missing_file_is_refused_with_its_path(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(RubricError, match=r"cannot read rubric .*nope\.toml: No such file"):
        load_rubric(missing)


def test_a_rubric_file_is_read_as_utf8(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(MINIMAL.replace('"Values"', '"Valeurs – étape 2"'), encoding="utf-8")
    assert load_rubric(path).check("loss20.values").title == "Valeurs – étape 2"


def test_the_plots_switch_is_off_by_default_and_read_from_its_table():
    assert load_rubric().plots.accept_learner_values is False
    assert parse_rubric(MINIMAL).plots.accept_learner_values is False
    lenient = parse_rubric(MINIMAL + "[plots]\naccept_learner_values = true\n")
    assert lenient.plots.accept_learner_values is True
    # Part of the text, so of the fingerprint: stored grades are redone when it changes.
    assert lenient.fingerprint != parse_rubric(MINIMAL).fingerprint
    # The default rubric documents it, commented out.
    assert "# accept_learner_values = true" in default_rubric_text()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('accept_learner_values = "yes"', "plots.accept_learner_values: Input should be a valid"),
        ("accept_learner_values = 1", "plots.accept_learner_values: Input should be a valid"),
        ("accept_learner_value = true", "plots.accept_learner_value: Extra inputs"),
    ],
    ids=["string", "number", "misspelled"],
)
def test_a_bad_plots_switch_is_refused_naming_the_key(table, message):
    with pytest.raises(RubricError) as refused:
        parse_rubric(MINIMAL + "[plots]\n" + table + "\n")
    assert message in str(refused.value)


# -- per-check visibility and its release ----------------------------------------------------


def test_every_check_is_visible_unless_the_rubric_says_otherwise():
    assert {c.visibility for c in load_rubric().checks} == {"visible"}
    assert load_rubric().revealed() == {"visible"}
    assert parse_rubric(MINIMAL).check("loss20.values").visibility == "visible"
    for value in ("visible", "hidden", "after_due_date", "after_published"):
        rubric = parse_rubric(MINIMAL + f'visibility = "{value}"\n')
        assert rubric.check("loss20.values").visibility == value
    # --integrity's extra check is visible; a rubric may list it to hide it
    assert parse_rubric(MINIMAL).with_integrity().check("integrity.seed").visibility == "visible"
    # it re-checks LOSS20's numbers: held back with the values check
    hidden = parse_rubric(MINIMAL + 'visibility = "hidden"\n').with_integrity()
    assert hidden.check("integrity.seed").visibility == "hidden"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            'visibility = "secret"\n',
            "checks.0.visibility: Value error, unknown visibility 'secret'; use one of visible, "
            "hidden, after_due_date, after_published",
        ),
        ("visibility = false\n", "checks.0.visibility: Value error, unknown visibility False"),
        # a misspelt key must not leave a check meant to be hidden visible
        ('visiblity = "hidden"\n', "checks.0.visiblity: Extra inputs are not permitted"),
        (
            "[release]\nafter_due_date = 2026-12-04T23:59:00\n",
            "release.after_due_date: Value error, 2026-12-04T23:59:00 has no time zone; write it "
            "as e.g. 2026-12-04T23:59:00Z (UTC) or with +01:00",
        ),
        (
            "[release]\nafter_due_date = 2026-12-04\n",
            "release.after_due_date: Value error, 2026-12-04 is a day, not a moment; write e.g. "
            "2026-12-04T23:59:00Z",
        ),
        ('[release]\nafter_due_date = "soon"\n', "release.after_due_date"),
        ('[release]\nafter_published = "yes"\n', "release.after_published: Input should be"),
        ("[release]\npublished = true\n", "release.published: Extra inputs are not permitted"),
    ],
    ids=[
        "unknown_name",
        "not_a_string",
        "misspelt_key",
        "due_without_zone",
        "due_a_day",
        "due_text",
        "published_text",
        "unknown_release_key",
    ],
)
def test_a_bad_visibility_or_release_is_refused_naming_the_key(extra, message):
    with pytest.raises(RubricError) as refused:
        parse_rubric(MINIMAL + extra)
    assert message in str(refused.value)


def test_release_reveals_after_the_due_date_and_when_published():
    from datetime import UTC, datetime, timedelta

    due = datetime(2026, 12, 4, 23, 59, tzinfo=UTC)
    rubric = parse_rubric(MINIMAL + "[release]\nafter_due_date = 2026-12-05T00:59:00+01:00\n")
    assert rubric.release.after_due_date == due
    assert rubric.revealed(due - timedelta(seconds=1)) == {"visible"}
    assert rubric.revealed(due) == {"visible", "after_due_date"}
    both = parse_rubric(MINIMAL + "[release]\nafter_due_date = true\nafter_published = true\n")
    assert both.revealed() == {"visible", "after_due_date", "after_published"}
    # nothing ever reveals a hidden check to learners
    assert "hidden" not in both.revealed(due + timedelta(days=9999))
    # the default rubric documents both, commented out
    text = default_rubric_text()
    assert "# after_due_date = " in text and "# after_published = true" in text
    assert '#   visibility = "after_due_date"' in text
