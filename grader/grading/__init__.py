"""From what a notebook produced (`grader.models.Execution`) to points and words.

`rubric` reads the instructor's TOML (default: `default_rubric.toml`), `checks.evaluate`
scores an Execution against it, `compare` says what "the same numbers" means, `diagnosis`
names the likely mistake from the reference's variants, `forgery` spots answers typed in as
literals, `integrity` derives each submission's secret seed. No kernels, no I/O: everything
here is unit-tested on hand-built Executions. Imports `grader.models` and `reference` only.
"""
