"""User-facing errors: `ReidError`, one line for the user, and the informative line of any exception."""

class ReidError(Exception):
    """A problem with the user's input, reported as one line (no traceback)."""


def first_message_line(err):
    """The informative line of an exception's message (torch's can run to a page)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:  # torch.load(weights_only=True): the reason follows
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0].split(". ", 1)[0].rstrip(".") if lines else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
