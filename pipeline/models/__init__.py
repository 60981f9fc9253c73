"""Encoders: a backbone of the registry (ResNet-18/50, IBN-a ResNet-50, MobileNetV2), avg or GeM
pooling, BN neck, L2 output."""

from pipeline.models.reid import IMAGENET_MEAN, IMAGENET_STD, ReIDModel, build_model

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ReIDModel", "build_model"]
