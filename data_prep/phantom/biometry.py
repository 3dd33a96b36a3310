"""Fetal sizes by gestational age: INTERGROWTH-21st biometry and two organ nomograms (docs/phantom.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def _ig21_mean_sd(ga: float) -> dict[str, tuple[float, float]]:
    lg = math.log(ga)
    g2, g3 = ga * ga, ga**3
    hc = (
        -28.2849 + 1.69267 * g2 - 0.397485 * g2 * lg,
        1.98735 + 0.0136772 * g3 - 0.00726264 * g3 * lg + 0.000976253 * g3 * lg * lg,
    )
    bpd = (
        5.60878 + 0.158369 * g2 - 0.00256379 * g3,
        math.exp(0.101242 + 0.00150557 * g3 - 0.000771535 * g3 * lg + 0.0000999638 * g3 * lg * lg),
    )
    ac = (-81.3243 + 11.6772 * ga - 0.000561865 * g3, -4.36302 + 0.121445 * g2 - 0.0130256 * g3 + 0.00282143 * g3 * lg)
    fl = (-39.9616 + 4.32298 * ga - 0.0380156 * g2, math.exp(0.605843 - 42.0014 / g2 + 0.00000917972 * g3))
    return {"hc": hc, "bpd": bpd, "ac": ac, "fl": fl}


def intergrowth_biometry(
    ga_weeks: float,
    z_score: float = 0.0,
    measure_noise: Sequence[float] | None = None,
) -> dict[str, float]:
    """Fetal biometry in mm from the INTERGROWTH-21st equations (Papageorghiou et al., Lancet 2014).

    Args:
        ga_weeks: gestational age in weeks (the equations are fitted for 14-42).
        z_score: shared size z-score of the fetus.
        measure_noise: optional per-measure extra z for (hc, bpd, ac, fl); a shared z-score
            plus a small per-measure z keeps the sizes of one fetus correlated.

    Returns:
        ``{"hc", "bpd", "ac", "fl"}`` in mm.
    """
    if not 12.0 <= ga_weeks <= 43.0:
        raise ValueError(f"gestational age {ga_weeks} weeks is outside the 12-43 week range of INTERGROWTH-21st")
    noise = list(measure_noise) if measure_noise is not None else [0.0] * 4
    stats = _ig21_mean_sd(ga_weeks)
    return {name: mu + (z_score + extra) * sd for (name, (mu, sd)), extra in zip(stats.items(), noise)}


def cardiac_circumference_mm(ga_weeks: float) -> float:
    """Fetal cardiac circumference in mm, -53.11 + 6.56 GA - 0.035 GA^2 (PubMed 21876089)."""
    return -53.11 + 6.56 * ga_weeks - 0.035 * ga_weeks**2


def csp_width_mm(ga_weeks: float) -> float:
    """Cavum septi pellucidi width in mm, 0.2705 GA - 1.6121 (J Obstet Gynaecol 2022 nomogram)."""
    return 0.2705 * ga_weeks - 1.6121
