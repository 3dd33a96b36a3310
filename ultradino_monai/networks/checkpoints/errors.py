"""The one error every checkpoint step raises (a backbone is loaded exactly or not at all)."""


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded exactly: unreadable, unrecognised, or keys that do not match."""
