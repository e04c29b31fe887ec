"""Errors a user can cause and fix: shown as one paragraph, without a traceback."""


class UserError(Exception):
    """Bad input or a missing prerequisite: the message says what was wrong and what to do."""


class DeviceError(RuntimeError):
    """The device (emulated or real) refused or failed a call."""
