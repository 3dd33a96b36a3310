"""Acoustic properties of the phantom's tissues: echo level, attenuation, specularity, texture.

The levels and coefficients follow the "Echo levels" and "Attenuation" tables of docs/phantom.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tissue:
    """Acoustic properties of one scene layer.

    Attributes:
        echo_db: mean backscatter relative to parenchyma (liver = 0 dB).
        atten: attenuation in dB/cm/MHz (one way; doubled for the round trip).
        specular: fraction of the echo energy that is coherent (bone, fascia): 0..1.
        texture_db: amplitude of the smooth tissue heterogeneity in dB.
        angle_db: how many dB a specular surface loses when the beam is tangent to it.
    """

    echo_db: float
    atten: float = 0.5
    specular: float = 0.0
    texture_db: float = 1.0
    angle_db: float = 0.0


# Echo defaults and attenuation (dB/cm/MHz) from the tables of docs/phantom.md.
FLUID = Tissue(-48.0, atten=0.005, texture_db=0.0)
BLOOD = Tissue(-42.0, atten=0.17, texture_db=0.0)
BRAIN = Tissue(-5.0, atten=0.6, texture_db=2.5)
THALAMUS = Tissue(-9.0, atten=0.6, texture_db=1.0)
LIVER = Tissue(0.0, atten=0.5, texture_db=3.0)
BOWEL = Tissue(2.0, atten=0.6, texture_db=4.5)
MYOCARDIUM = Tissue(0.0, atten=0.52, texture_db=2.5)
MUSCLE = Tissue(-1.0, atten=1.0, texture_db=4.0)
FAT = Tissue(-8.0, atten=0.63, texture_db=3.5)
LUNG = Tissue(3.0, atten=0.6, texture_db=2.5)
PLACENTA = Tissue(4.5, atten=0.6, texture_db=4.0)
MYOMETRIUM = Tissue(-3.0, atten=0.6, texture_db=3.5)
FETAL_SOFT = Tissue(-1.0, atten=0.6, texture_db=4.0)
CARTILAGE = Tissue(-10.0, atten=0.8, texture_db=1.0)
BRIGHT_LINE = Tissue(12.0, atten=0.6, specular=0.3, texture_db=1.0, angle_db=6.0)
SKIN = Tissue(8.0, atten=0.8, specular=0.3, texture_db=1.0, angle_db=4.0)
# Skull: thin mid-trimester bone, partial 10-20 dB shadow; femur/ribs/vertebrae: near-total shadow.
SKULL = Tissue(20.0, atten=8.0, specular=0.6, texture_db=1.0, angle_db=10.0)
BONE = Tissue(22.0, atten=14.0, specular=0.6, texture_db=1.0, angle_db=8.0)
