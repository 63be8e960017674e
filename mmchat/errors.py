"""The one error type for expected trouble.

Anything a user can fix or should know about (a missing file, an unreadable image, absent model
weights, a bad WAV, no microphone) raises :class:`MMChatError` with a message they can act on.
The CLI prints it without a traceback and exits non-zero; the app shows it and carries on.
Everything else is a bug and is allowed to crash loudly.
"""


class MMChatError(Exception):
    """Expected trouble, with a message written for the user."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\n  {self.hint}" if self.hint else text
