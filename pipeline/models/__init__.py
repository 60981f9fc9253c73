"""Encoders: ResNet-18/50 and IBN-a ResNet-50, avg or GeM pooling, BN neck, L2 output."""

from pipeline.models.reid import IMAGENET_MEAN, IMAGENET_STD, ReIDModel, build_model

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ReIDModel", "build_model"]
