"""The LMS webhook service: signed submissions in, graded results out (``mbgd-grader serve``)."""

from grader.service.app import create_app
from grader.service.settings import Settings, SettingsError, from_environment

__all__ = ["Settings", "SettingsError", "create_app", "from_environment"]
