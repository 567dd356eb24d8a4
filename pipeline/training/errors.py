"""The one error of a run that cannot go on."""


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, no GPU where one is required, full disk)."""
