"""Not a module of the grader: the `__init__.py` a learner's kernel finds in its packages.

`grader.execution.kernel_view` hides the grader's own packages (`grader`, `reference`) from
a learner's kernel behind an empty read-only mount holding only this file, bound read-only as their
`__init__.py`, so `import reference` fails there instead of importing an empty namespace
package. Importing it anywhere raises.
"""

raise ModuleNotFoundError(
    f"No module named {__name__!r} (the grader is not available inside the learner's kernel)",
    name=__name__,
)
