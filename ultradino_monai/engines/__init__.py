"""Engines the bundle configs call (pretraining, segmentation, classification, embedding, export).

Importing this package (every bundle config does, through its ``imports``) installs the bundle exit hook:
an uncaught :class:`~ultradino_monai.utils.errors.UserInputError` ends the run with one ``error:`` line and
status 2 instead of a traceback chain (docs/bundles.md, "Errors").
"""

from ultradino_monai.utils.errors import install_excepthook

install_excepthook()
