"""Patient-grouped, seeded, deterministic split files (docs/design.md contract 1).

Every training / validation / test partition used anywhere in the project (the
segmentation and classification bundles, the linear probe, the nnU-Net
baseline) is a *split file* written by this module, never made by hand:

.. code-block:: json

    {
      "labels": {"background": 0, ...},            # copied from the datalist ("classes" too)
      "split": {                                    # provenance, no timestamps (bytes are reproducible)
        "kind": "fewshot_n20",                      # the name results records use as "split_kind"
        "family": "fewshot",                        # full | fewshot | label_efficiency
        "dataset": "fass", "seed": 0, "draw": 3,
        "source_datalist": "../datalist.json", "source_sha256": "...",
        "patient_grouped": true, "protocol": "...", # one sentence saying how it was drawn
        "counts": {"training": {"images": 20, "patients": 20}, "validation": {...},
                   "test": {...}, "unused": {...}}
      },
      "training": [...], "validation": [...], "test": [...]
    }

Items are copies of the datalist items; their relative ``image`` / ``label``
paths are re-based so they resolve from the split file's own folder, and the
file can be handed to :func:`ultradino_monai.data.datalist.load_datalist` as is.

Randomness. Patients (and images inside a patient) are put in a random order by
sorting on ``sha256(salt, seed, name)``, not by a PRNG: this order is identical
on every platform and every Python / NumPy version (NumPy's ``Generator``
streams are not guaranteed stable across releases), so a published split can
always be re-derived from ``(datalist, seed)``. The same seed gives
byte-identical files.

Grouping. No patient ever appears in two of training / validation / test
(checked before a file is written). Where a protocol takes only *some* images of
a training patient (few-shot), the patient's remaining images go to no section
and are counted as ``"unused"``; they are never moved into validation.

Protocols (paper: docs/paper.md §3; see
docs/datasets.md §1.1/§1.2; docs/recipe.md §1.5):

* FASS (:func:`fass_splits`): one fixed test set of 20 % of the *images*,
  patient-grouped, shared by every file.

  - ``full_seed{s}.json``: the rest split 80/20 (images, patient-grouped) into
    training / validation, ``num_seeds`` = 3 seeds (paper: mean over 3 seeds).
  - ``fewshot_n20_draw{d}.json``: exactly n = 20 training images, 5 draws. The
    paper draws "n = 20 images"; a random draw of 20 of ~1,270 images almost
    always hits 20 different patients, so by default one image per patient is
    taken from 20 randomly ordered patients (``fewshot_max_per_patient=1``).
    Validation = every non-test image of the patients not used for training
    (the paper's "rest val", minus the training patients' other images).
  - ``label_efficiency_p{10,25,50}_seed{s}.json``: 10/25/50 % of the training
    *patients* of ``full_seed{s}`` (at least one), same validation and test as
    ``full_seed{s}``; nested (p10 ⊂ p25 ⊂ p50) for a given seed. 100 % is
    ``full_seed{s}``.

  The paper's Table 1 header says FASS full has n = 942 training images; 80/20
  of the remaining 80 % gives about 1,016. The UltraDINO split lists are not
  published (docs/datasets.md §1.1), so this cannot be matched exactly.
* JNU-IFM (:func:`jnu_splits`): about half of the *patients* held out as test.

  - ``fewshot_p4_draw{d}.json``: 4 patients, at most 10 images each (a random
    subset of that patient's frames), 5 draws. Validation = every non-test image
    of the other patients. The paper says "val = all images not used for
    training"; taken literally that puts the training patients' other frames
    (near-duplicates of the training frames) into validation and breaks the
    patient-grouping contract, so it is only available as the explicit switch
    ``val_includes_train_patients=True`` (metadata then says
    ``"patient_grouped": false``).
  - ``full_seed{s}.json``: the non-test pool split 80/20 (images, patient-grouped).
* Any datalist with a fixed ``"test"`` section (e.g. FETAL_PLANES_DB's official
  test split, :func:`holdout_splits`): the other items split 80/20 into
  training / validation by patient, ``full_seed{s}.json``.

Every call also writes ``index.json`` listing the files with their counts.
"""

from ultradino_monai.data.splits.cli import main
from ultradino_monai.data.splits.fass import fass_splits
from ultradino_monai.data.splits.files import write_split_file
from ultradino_monai.data.splits.grouping import (
    SECTIONS,
    SplitError,
    check_patient_disjoint,
    datalist_items,
    group_by_patient,
    patient_grouped_split,
    stable_order,
)
from ultradino_monai.data.splits.holdout import holdout_splits
from ultradino_monai.data.splits.jnu import jnu_splits

__all__ = [
    "SECTIONS",
    "SplitError",
    "stable_order",
    "datalist_items",
    "group_by_patient",
    "patient_grouped_split",
    "check_patient_disjoint",
    "write_split_file",
    "fass_splits",
    "jnu_splits",
    "holdout_splits",
    "main",
]
