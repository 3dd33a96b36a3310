"""``python -m ultradino_monai.data.splits``: see :mod:`ultradino_monai.data.splits.cli`."""

from ultradino_monai.data.splits.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
