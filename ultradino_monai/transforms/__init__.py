"""Transforms: the shared deterministic ultrasound preprocessing, supervised augmentation, DINOv2 multi-crop."""

from .augment import (
    RandBrightnessContrast,
    RandBrightnessContrastd,
    RandGamma,
    RandGammad,
    RandGaussianNoiseVar,
    RandGaussianNoiseVard,
    RandGridDistortionKeysd,
    RandUltrasoundAffined,
    classification_augmentation,
    segmentation_augmentation,
    ultrasound_train_transforms,
)
from .multicrop import BLUR_PROBABILITIES, CropParams, DinoMultiCrop, DinoMultiCropd
from .ultrasound import (
    BT601_WEIGHTS,
    FUS_MEAN,
    FUS_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    AntialiasedResize,
    AntialiasedResized,
    CheckSpatialShapesd,
    LoadUltrasoundImage,
    LoadUltrasoundImaged,
    ScaleIntensityByDtype,
    ScaleIntensityByDtyped,
    ToSingleChannel,
    ToSingleChanneld,
    normalization_stats,
    normalization_transforms,
    preprocess_image_array,
    ultrasound_preprocessing,
)
from .view_render import render_views, resize_taps
