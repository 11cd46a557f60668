"""User-facing errors: one sentence that says what was wrong, where, and what to do."""


class NoduleClipError(Exception):
    """An error caused by the user's input; the CLI prints its message and exits non-zero."""


class InputError(NoduleClipError):
    """A file, folder, manifest row or argument that cannot be used as given."""
