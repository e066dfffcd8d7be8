"""Errors the gateway answers itself, as JSON `{"errorType", "errorMessage"}`."""
from __future__ import annotations


class SoraError(Exception):
    """An error the gateway answers itself, as JSON."""

    def __init__(self, status: int, error_type: str, message: str, headers=None):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.headers = headers or {}
