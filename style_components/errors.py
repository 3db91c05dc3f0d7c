"""Errors a user can act on. Every message names the file and, where it applies, the key."""


class StyleComponentsError(Exception):
    """Base class: anything the user can fix (a file, a setting, an input)."""


class ModelFileError(StyleComponentsError):
    """A model file is missing, unreadable, or does not hold what its kind requires."""

    def __init__(self, path, problem: str, key: str | None = None):
        self.path, self.problem, self.key = str(path), problem, key
        where = f" (key {key!r})" if key is not None else ""
        super().__init__(f"{self.path}{where}: {problem}")


class UnsafePickleError(StyleComponentsError):
    """A pickle asked to build something outside the converter's allow-list."""


class IncompatibleModelError(StyleComponentsError):
    """An adapter does not fit the UNet it was applied to (e.g. SDXL adapter on SD1)."""


class UsageError(StyleComponentsError, ValueError):
    """A wrong argument or setting (a ValueError too, as Python's own argument errors are)."""
