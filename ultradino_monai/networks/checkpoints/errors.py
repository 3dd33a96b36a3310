"""The one error every checkpoint step raises (a backbone is loaded exactly or not at all)."""

from ultradino_monai.utils.errors import UserInputError


class CheckpointError(UserInputError):
    """A checkpoint cannot be loaded exactly: unreadable, unrecognised, or keys that do not match.

    A :class:`~ultradino_monai.utils.errors.UserInputError` (a ``ValueError``): the file was named by the user.
    """
