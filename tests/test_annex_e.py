"""Our PS3.15 Annex E Table E.1-1 against KitwareMedical's ``dicom-anonymizer`` (a test dependency).

Both tables are transcriptions of the 2024b edition of Table E.1-1. ``dicomanonymizer`` keeps one tag
list per action category (``D_TAGS``, ``X_Z_U_STAR_TAGS``, ...), exposed through
``dicomfields_selector.dicom_anonymization_database_selector("dicomfields_2024b")``; tags are
``(group, element)`` pairs, or ``(group, element, group_mask, element_mask)`` for repeating groups.
Ours maps each tag to its action code. A tag that one table puts in a different category, or that only
one table lists, fails the test with the tag named.

Known difference in scope, not in content: the package lists the repeating groups as three masks
(curve data 50xx,xxxx; overlay data 60xx,3000; overlay comments 60xx,4000). We do not put masks in
``TABLE_E1_1``; :func:`~data_prep.ingest.annex_e.is_overlay_or_curve` rejects *every* element of
the even 50xx / 60xx groups, which contains all three masks (checked below).
"""

from __future__ import annotations

import pytest
from dicomanonymizer import dicomfields_selector

from data_prep.ingest.annex_e import TABLE_E1_1, is_overlay_or_curve

# dicomanonymizer's category name -> our action code (Table E.1-1's column notation).
CATEGORY_TO_ACTION = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


@pytest.fixture(scope="module")
def kitware_2024b() -> dict[str, list[tuple[int, ...]]]:
    return dicomfields_selector.dicom_anonymization_database_selector("dicomfields_2024b")


def _single_tags(entries: list[tuple[int, ...]]) -> set[int]:
    return {(entry[0] << 16) | entry[1] for entry in entries if len(entry) == 2}


def _fmt(tags: set[int]) -> list[str]:
    return [f"({tag >> 16:04X},{tag & 0xFFFF:04X})" for tag in sorted(tags)]


def test_every_category_of_the_package_maps_to_one_of_our_action_codes():
    # "ALL_TAGS" is the package's union of the others, not a category of its own.
    categories = set(dicomfields_selector.ANONYMIZATION_CATEGORIES) - {"ALL_TAGS"}
    assert categories == set(CATEGORY_TO_ACTION), "dicomanonymizer's categories changed; update the mapping"
    assert set(TABLE_E1_1.values()) == set(CATEGORY_TO_ACTION.values())


@pytest.mark.parametrize("category", sorted(CATEGORY_TO_ACTION))
def test_tag_set_per_action_matches_dicom_anonymizer_2024b(kitware_2024b, category):
    action = CATEGORY_TO_ACTION[category]
    theirs = _single_tags(kitware_2024b[category])
    ours = {tag for tag, code in TABLE_E1_1.items() if code == action}
    assert not ours - theirs and not theirs - ours, (
        f"action {action}: only in ours {_fmt(ours - theirs)}, only in dicom-anonymizer {_fmt(theirs - ours)}"
    )


def test_same_617_single_tags_and_no_tag_in_two_categories(kitware_2024b):
    listed = [(entry[0] << 16) | entry[1] for entry in kitware_2024b["ALL_TAGS"] if len(entry) == 2]
    assert len(listed) == len(set(listed)) == len(TABLE_E1_1) == 617
    assert set(listed) == set(TABLE_E1_1)


def test_repeating_group_masks_are_covered_by_is_overlay_or_curve(kitware_2024b):
    masks = [entry for entry in kitware_2024b["ALL_TAGS"] if len(entry) == 4]
    # Curve data (50xx,xxxx), overlay data (60xx,3000), overlay comments (60xx,4000); all action X.
    assert sorted(masks) == sorted(
        [(0x5000, 0x0000, 0xFF00, 0x0000), (0x6000, 0x3000, 0xFF00, 0xFFFF), (0x6000, 0x4000, 0xFF00, 0xFFFF)]
    )
    assert set(masks) <= set(kitware_2024b["X_TAGS"])
    for group, element, group_mask, element_mask in masks:
        # Every even (public) group the mask matches; odd groups are private and rejected as such.
        groups = [g for g in range(0x10000) if g & group_mask == group and g % 2 == 0]
        assert len(groups) == 128
        free_element_bits = ~element_mask & 0xFFFF
        elements = sorted({element, element | free_element_bits, element | (0x1234 & free_element_bits)})
        missed = [(g << 16) | e for g in groups for e in elements if not is_overlay_or_curve((g << 16) | e)]
        assert not missed, f"mask ({group:04X},{element:04X}) not rejected for {_fmt(set(missed))}"
    # And the check is not simply "everything": neighbouring groups and the odd (private) groups pass.
    assert not is_overlay_or_curve(0x4FFE0010) and not is_overlay_or_curve(0x51000010)
    assert not is_overlay_or_curve(0x60013000) and not is_overlay_or_curve(0x61003000)
