"""The learners' door: `pytest --mbgd-notebook my_lab.ipynb`, one test item per rubric check.

Inactive unless `--mbgd-notebook` is given: then it collects the given notebooks (instead of the
default test paths when no other path was named), grades each notebook once per session with
`grader.pipeline.grade`, fails an item with the check's learner-facing message (no grader
traceback unless `-vv`), writes the feedback page, and ends with `mbgd-grader: 7/10 points`.

Checks the rubric marks `hidden` are not collected, nor `after_due_date` / `after_published`
ones until its `[release]` table reveals them; the points, headline and page then speak of
the shown checks only and say how many more there are (`grader.reports.learner_view`), so a
green run never reads as full marks when a hidden check would lower the grade.

Every option is `--mbgd-...`, since a plugin's options reach every pytest run in the
environment; the first spellings (`--notebook`, `--rubric`, `--feedback-dir`,
`--notebook-jobs`) still work as aliases.
"""

from __future__ import annotations

import contextlib
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import pytest

from grader.errors import GraderError  # a small module: the grading core loads on demand

if TYPE_CHECKING:  # the grader is imported only when --mbgd-notebook is given
    from collections.abc import Iterator

    from _pytest._code.code import TerminalRepr, TracebackStyle

    from grader.execution.pool import KernelPool
    from grader.grading.rubric import CheckSpec, Rubric
    from grader.models import CheckResult, GradeResult
    from grader.reports.learner_view import LearnerView

PLUGIN_NAME = "mbgd-grader-session"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mbgd-grader", "grade a Mini-Batch Gradient Descent lab notebook")
    # The old unprefixed spellings stay as aliases: learners' notes and scripts use them.
    group.addoption(
        "--mbgd-notebook",
        "--notebook",
        dest="mbgd_notebook",
        action="append",
        default=[],
        metavar="PATH",
        help="grade this notebook, or every notebook in this folder (repeatable)",
    )
    group.addoption(
        "--mbgd-rubric",
        "--rubric",
        dest="mbgd_rubric",
        default=None,
        metavar="FILE",
        help="rubric TOML to grade with (default: the one shipped with mbgd-grader)",
    )
    group.addoption(
        "--mbgd-feedback-dir",
        "--feedback-dir",
        dest="mbgd_feedback_dir",
        default=None,
        metavar="DIR",
        help="write DIR/<notebook stem>/feedback.html (default: <stem>-feedback/ beside it)",
    )
    group.addoption(
        "--mbgd-notebook-jobs",
        "--notebook-jobs",
        dest="mbgd_notebook_jobs",
        type=int,
        default=1,
        metavar="N",
        help="grade up to N notebooks at once (default 1)",
    )
    group.addoption(
        "--mbgd-portable",
        dest="mbgd_portable",
        action="store_true",
        default=False,
        help="run the notebook in a plain kernel, without the Linux sandbox (what Windows and "
        "macOS always do)",
    )


def pytest_configure(config: pytest.Config) -> None:
    paths = config.getoption("mbgd_notebook")
    if not paths:
        return  # not asked: the plugin does nothing at all
    from grader.grading.rubric import RubricError, load_rubric

    notebooks = expand_notebooks(paths)
    rubric_path = config.getoption("mbgd_rubric")
    rubric_path = str(Path(rubric_path).resolve()) if rubric_path else None
    try:
        rubric = load_rubric(rubric_path)
    except RubricError as error:
        raise pytest.UsageError(f"--mbgd-rubric: {error}") from error
    extra = [str(path) for path in notebooks]
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        config.args = [*config.args, *extra]
    else:  # no path on the command line: grade the notebooks, don't collect the test paths
        config.args = extra
    feedback_dir = config.getoption("mbgd_feedback_dir")
    jobs = config.getoption("mbgd_notebook_jobs")
    if jobs < 1:
        raise pytest.UsageError("--mbgd-notebook-jobs must be at least 1")
    grading = NotebookGrading(
        notebooks,
        rubric,
        rubric_path,
        Path(feedback_dir) if feedback_dir else None,
        jobs,
        portable=bool(config.getoption("mbgd_portable")) or _needs_portable(),
    )
    config.pluginmanager.register(grading, PLUGIN_NAME)


def _needs_portable() -> bool:
    """A learner's own machine where the sandbox cannot grade: no bubblewrap (their own code,
    their own machine: no reason to refuse), or a CUDA build of torch, which cannot load under
    the sandbox's address-space limit. Either way the portable kernel, not a failed run
    (`grader.execution.portable`)."""
    from grader.execution.portable import torch_fits_the_sandbox
    from grader.execution.sandbox import find_bwrap

    return find_bwrap() is None or not torch_fits_the_sandbox()


def expand_notebooks(paths: list[str]) -> list[Path]:
    """Files as given, folders as the notebooks under them (`grader.submission.notebooks_under`:
    no hidden files or folders, no symbolic links)."""
    from grader.submission import notebooks_under

    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            inside = notebooks_under(path)
            if not inside:
                raise pytest.UsageError(f"--mbgd-notebook {raw}: no .ipynb notebook in this folder")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise pytest.UsageError(f"--mbgd-notebook {raw}: no such file or folder")
    return list(dict.fromkeys(path.resolve() for path in found))


def _points(value: float) -> str:
    return f"{round(value, 4):g}"


class NotebookGrading:
    """Session state: which notebooks to grade, with what, and what came out."""

    def __init__(
        self,
        notebooks: list[Path],
        rubric: Rubric,
        rubric_path: str | None,
        out: Path | None,
        jobs: int = 1,
        *,
        portable: bool = False,
    ) -> None:
        self.notebooks = set(notebooks)
        self.rubric = rubric
        self.reveal = rubric.revealed()  # what learners may see now (the rubric's [release])
        self.shown = [spec for spec in rubric.checks if spec.visibility in self.reveal]
        self.rubric_path = rubric_path
        self.out = out
        self.jobs = jobs
        self.files: list[NotebookFile] = []
        self.pool: ThreadPoolExecutor | None = None
        self.kernels: KernelPool | None = None  # the warm kernel pool, passed to every grade
        self.warm = contextlib.ExitStack()  # closes it at the end of the session
        self.portable = portable  # --mbgd-portable: no sandbox, no warm pool

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        """With --mbgd-notebook-jobs > 1, start grading every notebook with a selected item."""
        if self.jobs < 2 or session.config.option.collectonly:
            return  # graded lazily, one by one, when their first item runs
        items = session.items
        wanted = list(dict.fromkeys(i.notebook for i in items if isinstance(i, CheckItem)))
        if len(wanted) < 2:
            return
        from grader.execution.limits import RunLimits
        from grader.execution.pool import warm_pool
        from grader.execution.portable import use_portable

        # several notebooks: pay kernel start-up once (None where the sandbox allows no pool,
        # and no pool at all for portable kernels)
        if not use_portable(RunLimits(portable=self.portable)):
            self.kernels = self.warm.enter_context(warm_pool())
        self.pool = ThreadPoolExecutor(self.jobs, thread_name_prefix="mbgd-grade")
        for file in wanted:
            file.future = self.pool.submit(file.grade_once)

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.warm.close()

    def feedback_dir(self, notebook: Path) -> Path:
        if self.out is not None:
            return self.out / notebook.stem
        return notebook.parent / f"{notebook.stem}-feedback"

    @pytest.hookimpl
    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> NotebookFile | None:
        if file_path.resolve() in self.notebooks:
            return NotebookFile.from_parent(parent, path=file_path)
        return None

    @pytest.hookimpl
    def pytest_report_header(self, config: pytest.Config) -> str:
        count = len(self.notebooks)
        name = self.rubric_path or f"default ({self.rubric.name})"
        points = sum(spec.points for spec in self.shown)
        header = (
            f"mbgd-grader: {count} notebook{'s' if count != 1 else ''}, rubric {name}, "
            f"{_points(points)} points"
        )
        held = len(self.rubric.checks) - len(self.shown)
        if held:
            header += f" in the checks shown ({held} more not shown here)"
        return header

    @pytest.hookimpl
    def pytest_terminal_summary(
        self, terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
    ) -> None:
        graded = [f for f in self.files if f.outcome is not None]
        if not graded:
            return
        write = terminalreporter.write_line
        unsandboxed = sorted({f.sandbox for f in graded if f.sandbox and not _boxed(f.sandbox)})
        terminalreporter.section("mbgd-grader", sep="-")
        for file in graded:
            write(file.summary_line(), bold=True)
            view = file.view()
            if view is not None and view.result.diagnosis:
                write(f"  {view.result.diagnosis}")
            if view is not None and not view.complete:
                write(f"  {_withheld(view)}")
            if file.feedback_page is not None:
                write(f"  feedback page: {file.feedback_page}")
            elif file.feedback_error:
                write(f"  feedback page not written: {file.feedback_error}", yellow=True)
        for sandbox in unsandboxed:
            write(
                f"mbgd-grader: note: your notebook ran without a sandbox ({sandbox}); "
                "that is expected on your own computer.",
                yellow=True,
            )
        from grader.reports.feedback import torch_note

        versions = sorted({f.outcome.torch_version for f in graded if _graded(f.outcome)})
        for note in filter(None, map(torch_note, versions)):
            write(f"mbgd-grader: note: {note}", yellow=True)


def _graded(outcome: object) -> TypeGuard[GradeResult]:
    from grader.models import GradeResult

    return isinstance(outcome, GradeResult)


def _withheld(view: LearnerView) -> str:
    count = view.withheld
    return (
        f"{count} more check{'s' if count != 1 else ''} ({_points(view.withheld_points)} points) "
        f"{'is' if count == 1 else 'are'} graded but not shown here: this is not your final score."
    )


def _boxed(sandbox: str) -> bool:
    return sandbox.startswith("bubblewrap")


class GraderFailed(GraderError):
    """The grader itself failed on a notebook (not the learner's doing): shown on its items."""


class CheckFailed(GraderError):
    """A check did not pass; `str()` is the learner's message."""


class NotebookFile(pytest.File):
    """One notebook: one item per rubric check, graded once, lazily, on the first item."""

    outcome: GradeResult | BaseException | None = None
    future: Future | None = None
    feedback_page: Path | None = None
    feedback_error: str = ""

    @property
    def grading(self) -> NotebookGrading:
        plugin = self.config.pluginmanager.get_plugin(PLUGIN_NAME)
        assert isinstance(plugin, NotebookGrading)  # registered by pytest_configure
        return plugin

    def collect(self) -> Iterator[CheckItem]:
        self.grading.files.append(self)
        for spec in self.grading.shown:
            yield CheckItem.from_parent(self, name=spec.id, spec=spec)

    @property
    def sandbox(self) -> str:
        return self.outcome.sandbox if _graded(self.outcome) else ""

    def result(self) -> GradeResult:
        """Grade this notebook the first time any of its items runs; reuse it afterwards."""
        if self.outcome is None:
            self.outcome = self.future.result() if self.future else self.grade_once()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def view(self) -> LearnerView | None:
        """The grade as the learner may see it now; None before grading or if it failed."""
        if not _graded(self.outcome):
            return None
        from grader.reports.learner_view import learner_view

        return learner_view(self.outcome, self.grading.reveal)

    def grade_once(self) -> GradeResult | BaseException:
        try:
            from grader.execution.limits import RunLimits
            from grader.pipeline import GradeOptions, grade  # heavy: only when grading

            limits = RunLimits(portable=self.grading.portable)
            options = GradeOptions(rubric_path=self.grading.rubric_path, limits=limits)
            pool = self.grading.kernels
            result = grade(self.path, name=self.path.name, options=options, pool=pool)
        # A GraderError (no sandbox, say), or a bug a learner's notebook led the grader into:
        # either way it is reported on this notebook's items, never as a crash of the run.
        except Exception as error:  # noqa: BLE001
            failure = GraderFailed(f"{type(error).__name__}: {error}")
            failure.__cause__ = error
            return failure
        self._write_feedback(result)
        return result

    def _write_feedback(self, result: GradeResult) -> None:
        from grader.reports.feedback import write_reports

        out = self.grading.feedback_dir(self.path)
        for target in (out, Path.cwd() / ".mbgd-feedback" / self.path.stem):
            try:
                write_reports(result, target, reveal=self.grading.reveal, learner_copy=True)
            except OSError as error:  # e.g. a read-only folder: try the next place
                self.feedback_error = f"{target}: {error.strerror or error}"
                continue
            # It draws what the notebook produced: whatever goes wrong with that must not
            # cost the learner the grade.
            except Exception as error:  # noqa: BLE001
                self.feedback_error = f"the report could not be drawn ({error})"
                return
            self.feedback_page = target / "feedback.html"
            return

    def summary_line(self) -> str:
        view = self.view()
        if view is not None:
            shown = view.result
            points = f"{_points(shown.score)}/{_points(shown.max_score)} points"
            if not view.complete:
                points += " on the checks shown"
            extra = "" if shown.status == "graded" else f" ({shown.status})"
            return f"mbgd-grader: {points} for {self.nodeid}{extra}"
        return f"mbgd-grader: not graded: {self.nodeid}: the grader failed ({self.outcome})"


class CheckItem(pytest.Item):
    """One rubric check of one notebook."""

    def __init__(self, *, spec: CheckSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.check: CheckResult | None = None
        self.result: GradeResult | None = None

    @property
    def notebook(self) -> NotebookFile:
        assert isinstance(self.parent, NotebookFile)
        return self.parent

    def runtest(self) -> None:
        self.notebook.result()  # grades the notebook (once), or raises why it could not
        view = self.notebook.view()
        assert view is not None  # graded: result() returned
        result = view.result  # only the checks shown, and nothing computed from the others
        self.result = result
        self.check = next((c for c in result.checks if c.id == self.spec.id), None)
        if self.check is None:
            if result.status in ("rejected", "crashed") or result.error:
                self.user_properties.extend([("points", 0), ("max_points", self.spec.points)])
                raise CheckFailed(self._not_graded(result))
            pytest.skip(f"{self.spec.id} was not part of this grading run")
        self.user_properties.extend(
            [("points", self.check.points), ("max_points", self.check.max_points)]
        )
        if not self.check.passed:
            raise CheckFailed(self._learner_message(self.check))

    def _not_graded(self, result: GradeResult) -> str:
        if result.status == "crashed":
            return (
                f"The grader failed on this notebook (not your fault): {result.error}\n"
                "Please tell your instructor."
            )
        return f"Your notebook was not graded: {result.error or result.status}"

    def _learner_message(self, check: CheckResult) -> str:
        """The check's own message first: it is what pytest's one-line summary shows."""
        points = f"{_points(check.points)}/{_points(check.max_points)} points"
        lines = [
            check.message.strip() or "This check did not pass.",
            "",
            f"{check.name}: {points}.",
        ]
        if self.notebook.feedback_page is not None:
            lines.append(f"Feedback page: {self.notebook.feedback_page}")
        return "\n".join(lines)

    def _details(self) -> str:
        """What `-vv` adds: the machine ids and the failing cells' tracebacks."""
        result, check = self.result, self.check
        if result is None:
            return ""
        lines = ["", "-- details (-vv) --", f"status: {result.status}"]
        if check is not None and check.diagnosis:
            lines.append(f"diagnosis id: {check.diagnosis}")
        lines.append(f"graded variable: {result.answer_name or '(none found)'}")
        lines.append(f"sandbox: {result.sandbox}")
        if result.execution is not None:
            lines.append(f"kernel: {result.execution.fate}")
            for cell in result.execution.cells:
                if cell.status in ("ok", "not_run"):
                    continue
                lines.append(f"cell {cell.index}: {cell.status} {cell.error_name}")
                if cell.traceback:
                    lines.append(cell.traceback.rstrip())
        return "\n".join(lines)

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: TracebackStyle | None = None
    ) -> str | TerminalRepr:
        verbose = self.config.get_verbosity() >= 2
        if isinstance(excinfo.value, CheckFailed):
            return str(excinfo.value) + (self._details() if verbose else "")
        if isinstance(excinfo.value, GraderFailed):
            message = f"The grader itself failed on this notebook (not your fault): {excinfo.value}"
            if verbose and excinfo.value.__cause__ is not None:
                cause = excinfo.value.__cause__
                return message + "\n\n" + "".join(traceback.format_exception(cause))
            return message + "\n(run pytest with -vv for the grader's traceback)"
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        # The failure header; -v lines show the node id itself ('lab.ipynb::loss20.values')
        # because a domain the node id does not end with is not rewritten into '::' parts.
        return self.path, None, f"{self.path.name}::{self.name}: {self.spec.title}"
