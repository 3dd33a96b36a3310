"""nnU-Net trainer classes of this project, found by nnU-Net through ``nnUNet_extTrainer``.

nnunetv2 >= 2.8 looks a trainer name up first in its own ``nnunetv2.training.nnUNetTrainer``
tree and then in every folder listed in the ``nnUNet_extTrainer`` environment variable
(``nnunetv2/utilities/find_objects.py``: each module of the folder is imported as a
top-level module and searched for the class name). :func:`nnunet_baselines.environment.configure_environment`
puts this folder on that list, so ``run_training(..., trainer_class_name="nnUNetTrainer_UltraDINOShort")``
and ``nnUNetPredictor.initialize_from_trained_model_folder`` (which re-resolves the trainer
name stored in the checkpoint) both find it. Nothing here is imported when the package is
imported: the trainer modules import nnunetv2, which must only happen after the
environment is configured.
"""
