"""Plane class names and segmentation label schemes (docs/phantom.md, "Plane classes and label schemes").

Sources: Fetal Planes DB (Burgos-Artizzu et al., Sci Rep 2020), FASS (Mendeley Data 4gcpm9dsc3) and
JNU-IFM (Lu et al., Data in Brief 2022).
"""

from __future__ import annotations

#: Fetal Planes DB classes (Burgos-Artizzu et al., Sci Rep 2020) in UltraDINO's label order (index = class id).
PLANE_CLASSES = ["Other", "Maternal cervix", "Fetal abdomen", "Fetal brain", "Fetal femur", "Fetal thorax"]
#: Intrapartum transperineal view, the JNU-IFM segmentation plane (not a Fetal Planes class).
INTRAPARTUM = "Intrapartum transperineal"
ALL_PLANES = PLANE_CLASSES + [INTRAPARTUM]
#: FASS label scheme (Mendeley Data 4gcpm9dsc3).
FASS_LABELS = {"background": 0, "artery": 1, "liver": 2, "stomach": 3, "vein": 4}
#: JNU-IFM label scheme after the 7->1, 8->2 remap of its stored symphysis/head values.
JNU_LABELS = {"background": 0, "pubic_symphysis": 1, "head": 2}

_PLANE_ALIASES = {
    "other": "Other",
    "cervix": "Maternal cervix",
    "maternal cervix": "Maternal cervix",
    "abdomen": "Fetal abdomen",
    "fetal abdomen": "Fetal abdomen",
    "brain": "Fetal brain",
    "fetal brain": "Fetal brain",
    "femur": "Fetal femur",
    "fetal femur": "Fetal femur",
    "thorax": "Fetal thorax",
    "fetal thorax": "Fetal thorax",
    "intrapartum": INTRAPARTUM,
    "intrapartum transperineal": INTRAPARTUM,
    "transperineal": INTRAPARTUM,
}


def canonical_plane(plane: str) -> str:
    """Return the canonical plane name for a class name or short alias (case-insensitive)."""
    key = str(plane).strip().lower()
    if key in _PLANE_ALIASES:
        return _PLANE_ALIASES[key]
    raise ValueError(f"unknown plane {plane!r}; expected one of {ALL_PLANES} or aliases {sorted(_PLANE_ALIASES)}")
