"""mbgd-grader: grade the 'Mini-Batch Gradient Descent' PyTorch lab."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mbgd-grader")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

# The torch release the reference's numbers and the sample verdicts are tested with: the pin
# in constraints.txt (tests/test_packaging.py keeps the two equal). A learner's own computer
# may run another; the verdict then says so (grader.reports.feedback.torch_note).
TESTED_TORCH = "2.13.0"
