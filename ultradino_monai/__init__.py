"""UltraDINO-MONAI: a fetal-ultrasound foundation-model toolkit on MONAI."""

__version__ = "0.1.0"
