"""Entry point: ``python -m nnunet_baselines ...``.

Kept import-free at module level: nnU-Net's worker pools use the ``spawn`` start method,
and every spawned worker re-imports this module (as ``__mp_main__``).
"""

if __name__ == "__main__":
    import sys

    from nnunet_baselines.cli import main

    sys.exit(main())
