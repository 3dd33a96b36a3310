"""Synthetic B-mode fetal ultrasound phantom, formed in the image domain.

Each image is simulated on the polar grid of a convex (or endocavity) probe and scan-converted onto the
display; docs/phantom.md gives the facts and sources behind every step:

* a *scene* of tissue layers (echo level in dB relative to parenchyma, attenuation in dB/cm/MHz, optional
  specular component and segmentation label) is sampled on the polar grid (:mod:`.tissues`, :mod:`.shapes`,
  :mod:`.scene`);
* speckle is complex white noise multiplied by sqrt(backscatter) *before* a Gaussian PSF blur, then
  enveloped, so it is Rayleigh-distributed and laterally elongated; per-ray attenuation is accumulated along
  each line and a TGC removes only the nominal 0.5 dB/cm/MHz law plus a residual, so posterior enhancement
  appears behind fluid and clean or partial shadows behind bone (:mod:`.acoustics`);
* scan conversion is order-1 (bilinear) interpolation from the polar grid; log compression maps the envelope
  to 0..255 with display gain and dynamic range auto-optimised towards a brightness/contrast preset drawn
  independently of the anatomy, so image-wide intensity statistics do not give the plane away; outside the
  fan the display is black (:mod:`.display`);
* fetal sizes come from INTERGROWTH-21st (:mod:`.biometry`); plane layouts follow the ISUOG guidelines
  (:mod:`.anatomy`, :mod:`.plane_scenes`); label maps are evaluated exactly at display pixels;
* cine loops rock the probe about its apex by whole scan lines (speckle moves with the tissue) and blend a
  second speckle realisation in slowly (:mod:`.render`).

Public API: :data:`PLANE_CLASSES`, :data:`FASS_LABELS`, :data:`JNU_LABELS`, :func:`intergrowth_biometry`,
:class:`ProbeGeometry`, :class:`FanLayout`, :class:`PlaneImage`, :func:`render_plane`,
:func:`render_sequence`, :func:`label_scheme`; lower-level pieces (:class:`Scene`, :func:`acquire`,
:func:`envelope_db`, :class:`ScanConverter`, :func:`auto_optimise`, :func:`log_compress`) are public for tests
and experiments.
"""

from .acoustics import (
    Acquisition,
    ImagingParams,
    PolarGrid,
    acquire,
    draw_speckle,
    envelope_db,
    tgc_curve,
    tissue_texture,
)
from .biometry import cardiac_circumference_mm, csp_width_mm, intergrowth_biometry
from .classes import ALL_PLANES, FASS_LABELS, INTRAPARTUM, JNU_LABELS, PLANE_CLASSES, canonical_plane
from .display import ScanConverter, auto_optimise, log_compress
from .geometry import FanLayout, ProbeGeometry
from .plane_scenes import label_scheme
from .render import PlaneImage, render_plane, render_sequence
from .scene import Layer, Scene, SceneSample
from .shapes import Capsule, Ellipse, EllipseRing, Intersection, RadialBand, Shape, Tube
from .tissues import BONE, FLUID, Tissue

__all__ = [
    "ALL_PLANES",
    "BONE",
    "FASS_LABELS",
    "FLUID",
    "INTRAPARTUM",
    "JNU_LABELS",
    "PLANE_CLASSES",
    "Acquisition",
    "Capsule",
    "Ellipse",
    "EllipseRing",
    "FanLayout",
    "ImagingParams",
    "Intersection",
    "Layer",
    "PlaneImage",
    "PolarGrid",
    "ProbeGeometry",
    "RadialBand",
    "ScanConverter",
    "Scene",
    "SceneSample",
    "Shape",
    "Tissue",
    "Tube",
    "acquire",
    "auto_optimise",
    "canonical_plane",
    "cardiac_circumference_mm",
    "csp_width_mm",
    "draw_speckle",
    "envelope_db",
    "intergrowth_biometry",
    "label_scheme",
    "log_compress",
    "render_plane",
    "render_sequence",
    "tgc_curve",
    "tissue_texture",
]
