"""mbgd-grader: grade the 'Mini-Batch Gradient Descent' PyTorch lab."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mbgd-grader")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
