"""Scanner-style burned-in text and markers on a frame (docs/phantom.md, "On-screen overlays").

A full-width banner with the patient's identity, a grey bar, a depth ruler with a focal-zone marker, an
orientation marker and a cine gauge, drawn with Pillow's built-in bitmap font so every platform draws the
same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data_prep.phantom import PlaneImage

from .patients import FakePatient, FakeStudy

_FONT = None


def _font() -> ImageFont.ImageFont:
    global _FONT
    if _FONT is None:
        # Pillow's built-in bitmap font: identical glyphs everywhere, no font files needed
        _FONT = ImageFont.load_default_imagefont()
    return _FONT


def draw_text(
    canvas: np.ndarray, row: int, col: int, text: str, scale: int = 1, colour=(200, 200, 200)
) -> tuple[int, int]:
    """Burn ``text`` into ``canvas`` (H, W) or (H, W, 3) uint8 at (row, col) with the bitmap font.

    ``scale`` enlarges glyphs by pixel replication (2 gives ~22 px tall text). Returns the
    (height, width) of the drawn text box.
    """
    font = _font()
    left, top, right, bottom = font.getbbox(text)
    width, height = max(right, 1), max(bottom, 1)
    glyphs = Image.new("L", (width, height), 0)
    ImageDraw.Draw(glyphs).text((0, 0), text, fill=255, font=font)
    if scale != 1:
        glyphs = glyphs.resize((width * scale, height * scale), Image.NEAREST)
    mask = np.asarray(glyphs) > 127
    h = min(mask.shape[0], canvas.shape[0] - row)
    w = min(mask.shape[1], canvas.shape[1] - col)
    if h <= 0 or w <= 0:
        return 0, 0
    region = canvas[row : row + h, col : col + w]
    sub = mask[:h, :w]
    if canvas.ndim == 3:
        region[sub] = np.asarray(colour, dtype=np.uint8)
    else:
        region[sub] = np.uint8(round(float(np.mean(colour))))
    return mask.shape[0], mask.shape[1]


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    left, top, right, bottom = _font().getbbox(text)
    return bottom * scale, right * scale


@dataclass(frozen=True)
class OverlayStyle:
    """Where the scanner UI puts things on a (H, W) frame (docs/phantom.md, "On-screen overlays")."""

    banner_height: int  # 24-80 px full-width banner (28-40 for small text, 72-80 for large)
    text_scale: int  # 1 or 2 (bitmap font replicated)
    left_margin: int = 36  # grey bar
    right_margin: int = 78  # depth ruler

    @staticmethod
    def sample(rng: np.random.Generator) -> OverlayStyle:
        scale = int(rng.choice([1, 2, 2]))
        height = int(rng.integers(28, 41)) if scale == 1 else int(rng.integers(72, 81))
        return OverlayStyle(banner_height=height, text_scale=scale)

    def fan_box(self, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        top = self.banner_height + 6
        return top, self.left_margin, shape[0] - top - 14, shape[1] - self.left_margin - self.right_margin


def banner_lines(patient: FakePatient, study: FakeStudy, scale: int) -> list[tuple[str, str]]:
    """(left, right) text per banner row; the PHI here is what gets burned into the pixels.

    Large text (scale 2) needs three rows to fit 640 px; small text fits in two.
    """
    ga = study.ga_weeks
    days = int(round((ga % 1) * 7)) % 7
    when = f"{patient.show_date(study.exam_date)} {study.time[:2]}:{study.time[2:4]}:{study.time[4:]}"
    ident = f"ID: {patient.patient_id}  DOB: {patient.show_date(patient.birth_date)}"
    if scale >= 2:
        return [
            (study.institution.upper(), when),
            (patient.banner_name, f"GA {int(ga)}w{days}d"),
            (ident, "MI 0.9 TIb 0.4"),
        ]
    return [
        (f"{study.institution.upper()}   {patient.banner_name}", when),
        (f"{ident}  GA {int(ga)}w{days}d", "C1-5-D OB  MI 0.9 TIb 0.4"),
    ]


def burn_overlays(
    frame: np.ndarray,
    plane: PlaneImage,
    style: OverlayStyle,
    patient: FakePatient,
    study: FakeStudy,
    colour: bool,
    frame_index: int = 0,
    n_frames: int = 1,
) -> list[str]:
    """Draw banner, grey bar, depth ruler, orientation marker and cine gauge onto ``frame`` in place.

    Returns the list of burned-in text strings.
    """
    height, width = frame.shape[:2]
    grey = (200, 200, 200)
    accent = (90, 170, 255) if colour else (230, 230, 230)
    focus_colour = (235, 200, 70) if colour else (220, 220, 220)
    frame[: style.banner_height] = 0
    rows_text = banner_lines(patient, study, style.text_scale)
    burned = []
    line_h = text_size("Ag", style.text_scale)[0]
    gap = max(1, (style.banner_height - len(rows_text) * line_h) // (len(rows_text) + 1))
    for k, (left, right) in enumerate(rows_text):
        row = gap + k * (line_h + gap)
        left_w = draw_text(frame, row, 6, left, style.text_scale, grey)[1]
        right_w = text_size(right, style.text_scale)[1]
        if 6 + left_w + 12 + right_w > width - 6:
            raise ValueError(f"banner row {k} does not fit {width} px: {left!r} + {right!r}")
        draw_text(frame, row, width - right_w - 6, right, style.text_scale, grey)
        burned += [left, right]
    # grey bar at the left, 0..255 from bottom to top
    bar_top = style.banner_height + 12
    bar = np.linspace(255, 0, 128).astype(np.uint8)
    rows = slice(bar_top, min(bar_top + 128, height))
    frame[rows, 10:20] = (
        bar[: rows.stop - rows.start, None, None] if frame.ndim == 3 else bar[: rows.stop - rows.start, None]
    )
    # depth ruler: 1 cm ticks, longer every 5 cm, the depth value below
    mm_px = plane.info["mm_per_px"]
    face_row = plane.info["apex_row"] + plane.info["probe"]["radius_mm"] / mm_px
    depth_cm = plane.info["probe"]["depth_mm"] / 10.0
    x = width - style.right_margin + 20
    bottom = int(round(face_row + depth_cm * 10 / mm_px))
    frame[int(round(face_row)) : min(bottom, height - 1) + 1, x] = 150 if frame.ndim == 2 else (150, 150, 150)
    for cm in range(int(depth_cm) + 1):
        r = int(round(face_row + cm * 10 / mm_px))
        if r >= height:
            break
        length = 10 if cm % 5 == 0 else 5
        frame[r, x : x + length] = 200 if frame.ndim == 2 else grey
        if cm % 5 == 0 and cm > 0:
            draw_text(frame, r - 5, x + 13, str(cm), 1, grey)
    label = f"{depth_cm:.1f}cm"
    draw_text(frame, min(bottom + 3, height - 12), x - 10, label, 1, grey)
    focus_row = int(round(face_row + plane.info["focus_depth_mm"] / mm_px))
    for d in range(5):  # focal-zone triangle pointing at the ruler
        if 0 <= focus_row - d and focus_row + d < height:
            frame[focus_row - (4 - d) : focus_row + (4 - d) + 1, x - 8 + d] = focus_colour if frame.ndim == 3 else 220
    # orientation marker at the top-left of the fan
    r0, c0 = plane.info["fan_bbox"][0], plane.info["fan_bbox"][1]
    marker_row, marker_col = r0 + 2, max(c0 - 2, style.left_margin - 14)
    frame[marker_row : marker_row + 6, marker_col : marker_col + 6] = accent if frame.ndim == 3 else 230
    # cine gauge at the bottom
    if n_frames > 1:
        gauge_w = int(round((width // 3) * (frame_index + 1) / n_frames))
        frame[height - 6 : height - 3, 10 : 10 + gauge_w] = 160 if frame.ndim == 2 else (160, 160, 160)
    return burned
