"""The one exception type a user can act on; every package may raise it, app/ shows it."""


class SightlineError(Exception):
    """A problem the user can fix: `message` says what happened, `hint` what to do about it."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def user_text(self) -> str:
        return f"{self.message} {self.hint}".strip() if self.hint else self.message
