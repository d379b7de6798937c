"""A tiny but real transformers Mask2Former for COCO panoptic, saved like real weights.

The architecture is transformers' own ``Mask2FormerForUniversalSegmentation`` with a small Swin
backbone and the real 133 COCO panoptic class names; its weights are random. Random class heads give
near-uniform scores (about 1/134), so no query would pass the 0.5 score threshold and the panoptic
rules would never be exercised: the class head and the mask embedder are scaled up so that scores
and masks are confident enough to produce segments, rejected queries and fused stuff.
"""

from __future__ import annotations

from pathlib import Path

import torch

from advseg_cli.segmentation.classes import COCO_STUFF_NAMES, COCO_THING_NAMES

COCO_PANOPTIC_NAMES = [*COCO_THING_NAMES, *COCO_STUFF_NAMES]  # the model's 133 classes, things first


def tiny_mask2former(seed: int = 0, num_queries: int = 16, names: list[str] | None = None) -> torch.nn.Module:
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    names = names or COCO_PANOPTIC_NAMES
    backbone = SwinConfig(
        image_size=64,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=32,  # GroupNorm(32, ...) in the pixel decoder needs a multiple of 32
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=32,
        num_queries=num_queries,
        id2label=dict(enumerate(names)),
        label2id={name: index for index, name in enumerate(names)},
    )
    torch.manual_seed(seed)
    network = Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():
        network.class_predictor.weight.mul_(30.0)
        for name, parameter in network.named_parameters():
            if "mask_embedder" in name and name.endswith("weight"):
                parameter.mul_(4.0)
    return network


def save_tiny_mask2former(folder: Path, **kwargs) -> Path:
    """Write the tiny model with ``save_pretrained`` (config.json + model.safetensors) into ``folder``."""
    tiny_mask2former(**kwargs).save_pretrained(folder)
    return folder
