"""The LMS webhook service: signed submissions in, graded results out (``mbgd-grader serve``).

The names below are loaded when first used, so that importing one module of the package (the
signatures in `grader.service.signing`, say) does not load FastAPI and the grading core.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grader.service.app import create_app
    from grader.service.settings import Settings, SettingsError, from_environment

__all__ = ["Settings", "SettingsError", "create_app", "from_environment"]
_HOMES = {
    "create_app": "grader.service.app",
    "Settings": "grader.service.settings",
    "SettingsError": "grader.service.settings",
    "from_environment": "grader.service.settings",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
