"""User-facing errors: the CLI prints them as one line and exits with code 2 (no traceback)."""


class DalivsslError(Exception):
    """Bad input the user can fix (path, name, file content). Message is one line."""


class VideoError(DalivsslError):
    """A video that cannot be used: message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def unknown_name(kind: str, name: str, valid) -> DalivsslError:
    """Error for an unknown registry key, listing the valid names."""
    return DalivsslError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
