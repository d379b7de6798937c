"""The ``panoptic-fpn`` backend: the paper's Seg, detectron2's COCO Panoptic FPN (R50-FPN, 3x schedule).

detectron2 is an optional dependency (it is not on PyPI) and is imported only when this backend is
built. The model is built in code from detectron2's own model-zoo config
``COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml`` with the public code's score thresholds (0.4
for the ROI heads, RetinaNet and the panoptic combination's instance confidence).

Weights: the model zoo's ``model_final_c10459.pkl``, passed with ``--weights PATH``. A ``.pkl`` is a
Python pickle; advseg records no verified sha256 of that file (we could not download it to check one),
so it unpickles only a file the user names explicitly, and even then through a restricted unpickler
that can build nothing but NumPy arrays and plain containers. ``.pth``/``.pt`` files go through
``torch.load(weights_only=True)``.

Input: the training tensors (RGB in [-1, 1]) become BGR ``(x + 1) / 2 * 255`` minus detectron2's pixel
mean, at the given size (no resize to an 800-pixel short side: the public code fed 256x256 tensors
straight in), padded to a multiple of 32 as detectron2 pads.

Hard labels: detectron2's own panoptic output (``panoptic_seg`` + ``segments_info``) converted by
:func:`panoptic_to_labels`. Soft probabilities (differentiable; docs/segmentation.md):

* stuff ``82 + k - 1`` (k = 1..53) = ``S_k(x)``, the semantic head's softmax over its 54 classes;
* thing ``1 + c`` (c = 0..79) = ``S_0(x) * T_c(x) / max(1, sum_c T_c(x))`` where ``S_0`` is the semantic
  head's probability of its merged "things" class and ``T_c(x) = sum_{instances i of class c} s_i *
  m_i(x)``, the detections' scores times their mask probabilities pasted into the image.

So the "things" probability is spread over the detected instances in proportion to their evidence;
where no instance covers a pixel it stays unassigned (void). Per pixel the sum is at most
``sum_k S_k + S_0 = 1``. Box geometry is treated as fixed (detectron2 itself does not differentiate
through proposal coordinates); gradients reach the pixels through the semantic logits, the instance
scores and the mask logits.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from advseg_cli.devices import autocast
from advseg_cli.errors import WeightsMismatchError, WeightsNotFoundError
from advseg_cli.optional import DETECTRON2_GUIDE, require
from advseg_cli.segmentation.base import Segmenter, check_images, register_backend, register_weights_check
from advseg_cli.segmentation.classes import NUM_CLASSES, THINGS_MERGED
from advseg_cli.weights import ResolvedWeights, WeightsSpec, register_weights, resolve_weights

MODEL_NAME = "detectron2 COCO-PanopticSegmentation/panoptic_fpn_R_50_3x"
CONFIG_PATH = "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml"
INSTALL_GUIDE = DETECTRON2_GUIDE
WEIGHTS_URL = (
    "https://dl.fbaipublicfiles.com/detectron2/COCO-PanopticSegmentation/panoptic_fpn_R_50_3x/"
    "139514569/model_final_c10459.pkl"
)
# No sha256: we could not fetch the file to verify one, and an invented hash would be worse than none.
WEIGHTS = register_weights(
    WeightsSpec(
        name="panoptic-fpn-r50-3x",
        filename="model_final_c10459.pkl",
        option="--weights",
        used_by="advseg segcache --backend panoptic-fpn",
        how_to_get=f"download {WEIGHTS_URL} (detectron2 model zoo)",
    )
)
SCORE_THRESHOLD = 0.4  # the public code's ROI-heads, RetinaNet and instance-confidence thresholds
NUM_THING_CLASSES = 80
NUM_STUFF_CLASSES = 54  # detectron2's contiguous stuff ids: 0 = merged "things", 1..53 = COCO stuff


def panoptic_to_labels(panoptic_seg: Tensor, segments_info: list[dict[str, Any]]) -> Tensor:
    """detectron2's panoptic output of one image -> [H,W] uint8 labels in the 135-class layout.

    ``panoptic_seg`` holds segment ids (0 = void); each ``segments_info`` entry has ``id``,
    ``isthing`` and ``category_id`` -- the contiguous thing id (0..79) for things, the contiguous stuff
    id (1..53; 0 is the merged "things" class, never a segment) for stuff. Thing ``c`` -> ``1 + c``,
    stuff ``s`` -> ``81 + s``, void and ids without an entry -> 0.
    """
    ids = panoptic_seg.long().clamp_min(0)
    largest = max([int(ids.max()) if ids.numel() else 0, *(int(info["id"]) for info in segments_info)])
    table = torch.zeros(largest + 1, dtype=torch.uint8, device=ids.device)
    for info in segments_info:
        category = int(info["category_id"])
        if info["isthing"]:
            if not 0 <= category < NUM_THING_CLASSES:
                raise ValueError(f"thing category_id {category} is outside 0..79")
            table[int(info["id"])] = 1 + category
        else:
            if not 1 <= category < NUM_STUFF_CLASSES:
                raise ValueError(f"stuff category_id {category} is outside 1..53 (0 is the merged 'things')")
            table[int(info["id"])] = THINGS_MERGED + category
    return table[ids]


def paste_soft_masks(masks: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """[R,M,M] mask probabilities inside their boxes [R,4] (x0,y0,x1,y1) -> [R,H,W], differentiable.

    Each image pixel centre ``(x + 0.5, y + 0.5)`` is mapped into its box's mask and sampled bilinearly
    (outside the box: 0), the geometry detectron2 uses to paste masks; it thresholds the result at 0.5
    for its hard output, we keep the probabilities.
    """
    if masks.shape[0] == 0:
        return masks.new_zeros(0, height, width)
    x0, y0, x1, y1 = boxes.to(masks.dtype).unbind(dim=1)
    ys = torch.arange(height, device=masks.device, dtype=masks.dtype) + 0.5
    xs = torch.arange(width, device=masks.device, dtype=masks.dtype) + 0.5
    grid_y = (ys[None, :] - y0[:, None]) / (y1 - y0).clamp_min(1e-6)[:, None] * 2 - 1  # [R,H]
    grid_x = (xs[None, :] - x0[:, None]) / (x1 - x0).clamp_min(1e-6)[:, None] * 2 - 1  # [R,W]
    grid = torch.stack(
        [grid_x[:, None, :].expand(-1, height, -1), grid_y[:, :, None].expand(-1, -1, width)], dim=3
    )
    return F.grid_sample(masks[:, None], grid, mode="bilinear", align_corners=False)[:, 0]


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays and plain containers only: a model-zoo ``.pkl`` needs nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a detectron2 checkpoint: model-zoo ``.pkl`` or a ``.pth``/``.pt`` state dict."""
    try:
        if path.suffix == ".pkl":
            with open(path, "rb") as handle:
                data = _ArraysOnlyUnpickler(handle, encoding="latin1").load()
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise WeightsMismatchError(f"{path}: not a detectron2 checkpoint ({exc})".splitlines()[0]) from None
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise WeightsMismatchError(f"{path}: not a detectron2 checkpoint (no 'model' dictionary of weights)")
    return {
        key: torch.as_tensor(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
        for key, value in state.items()
        if isinstance(value, (np.ndarray, Tensor))
    }


def load_weights(network: torch.nn.Module, path: Path) -> None:
    """Copy a checkpoint into the network; every parameter and buffer must be there with its shape."""
    state = read_state_dict(path)
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or wrong:
        example = (missing or wrong)[0]
        raise WeightsMismatchError(
            f"{path}: does not fit Panoptic FPN R50-FPN ({len(missing)} missing, {len(wrong)} of another "
            f"shape, e.g. {example}); use {WEIGHTS.filename} from the detectron2 model zoo"
        )
    network.load_state_dict({k: state[k] for k in expected}, strict=True)


def _require_detectron2() -> None:
    """detectron2 is optional and not on PyPI: say where its guide is and which backend needs none."""
    require("detectron2", "the panoptic-fpn backend", alternative="or use --backend mask2former")


def panoptic_fpn_config(device: torch.device) -> Any:
    """detectron2's model-zoo config of Panoptic FPN R50 3x with the public code's thresholds."""
    from detectron2 import model_zoo

    cfg = model_zoo.get_config(CONFIG_PATH, trained=False)
    cfg.MODEL.WEIGHTS = ""  # loaded by load_weights, never fetched by detectron2
    cfg.MODEL.DEVICE = str(device)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = SCORE_THRESHOLD
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = SCORE_THRESHOLD
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = SCORE_THRESHOLD
    cfg.freeze()
    return cfg


def build_network(cfg: Any) -> torch.nn.Module:
    """The detectron2 model of ``cfg`` with freshly initialised weights."""
    from detectron2.modeling import build_model

    return build_model(cfg).eval()


class PanopticFPNSegmenter(Segmenter):
    """Frozen detectron2 Panoptic FPN: its panoptic output as hard labels, and differentiable soft maps."""

    backend = "panoptic-fpn"
    model_name = MODEL_NAME

    def __init__(
        self,
        network: torch.nn.Module,
        cfg: Any,
        device: torch.device,
        precision: str = "fp32",
        weights_record: dict[str, str] | None = None,
    ) -> None:
        super().__init__(device, precision)
        self.network = network  # detectron2 PanopticFPN (a GeneralizedRCNN with a semantic head)
        self.weights_record = weights_record
        combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
        self.thresholds = {
            "roi_heads_score": float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST),
            "retinanet_score": float(cfg.MODEL.RETINANET.SCORE_THRESH_TEST),
            "instances_confidence": float(combine.INSTANCES_CONFIDENCE_THRESH),
            "overlap": float(combine.OVERLAP_THRESH),
            "stuff_area_limit": float(combine.STUFF_AREA_LIMIT),
        }
        self.to(self.device)

    @staticmethod
    def to_detectron2_pixels(images: Tensor) -> Tensor:
        """[-1,1] RGB -> 0..255 BGR, the public code's conversion for detectron2."""
        return (images.flip(1) + 1.0) * 127.5

    @torch.no_grad()
    def detectron2_outputs(self, images: Tensor) -> list[dict[str, Any]]:
        """detectron2's own inference results (``panoptic_seg``, ``instances``, ``sem_seg``) per image."""
        check_images(images)
        pixels = self.to_detectron2_pixels(images.to(self.device, torch.float32))
        height, width = pixels.shape[-2:]
        inputs = [{"image": image, "height": height, "width": width} for image in pixels]
        with autocast(self.device, self.precision):
            return self.network(inputs)

    @torch.no_grad()
    def hard_labels(self, images: Tensor) -> Tensor:
        """[N,3,H,W] in [-1,1] -> [N,H,W] uint8: detectron2's panoptic result in the 135-class layout."""
        outputs = self.detectron2_outputs(images)
        return torch.stack([panoptic_to_labels(*output["panoptic_seg"]) for output in outputs])

    def _raw_outputs(self, images: Tensor) -> tuple[Tensor, list[Any], tuple[int, int]]:
        """Semantic logits [N,54,H,W] and detected instances with differentiable scores and masks."""
        from detectron2.structures import ImageList

        check_images(images)
        network = self.network
        height, width = int(images.shape[-2]), int(images.shape[-1])
        divisor = max(int(network.backbone.size_divisibility), 1)
        padded = (math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor)
        pixels = self.to_detectron2_pixels(images.to(self.device, torch.float32))
        normalised = (pixels - network.pixel_mean) / network.pixel_std
        normalised = F.pad(normalised, (0, padded[1] - width, 0, padded[0] - height))
        image_list = ImageList(normalised, [(height, width)] * images.shape[0])
        with autocast(self.device, self.precision):
            features = network.backbone(normalised)
            semantic_logits, _ = network.sem_seg_head(features, None)
            proposals, _ = network.proposal_generator(image_list, features, None)
            instances, _ = network.roi_heads(image_list, features, proposals, None)
        return semantic_logits[..., :height, :width].float(), instances, (height, width)

    def soft_probs(self, images: Tensor) -> Tensor:
        """[N,3,H,W] in [-1,1] -> [N,135,H,W] (module docstring); differentiable w.r.t. the images."""
        semantic_logits, instances, (height, width) = self._raw_outputs(images)
        semantic = semantic_logits.softmax(dim=1)  # [N,54,H,W]
        maps = []
        for index, found in enumerate(instances):
            keep = found.scores >= self.thresholds["instances_confidence"]
            masks = paste_soft_masks(
                found.pred_masks[keep][:, 0].float(), found.pred_boxes.tensor[keep].detach(), height, width
            )
            evidence = masks.new_zeros(NUM_THING_CLASSES, height, width).index_add(
                0, found.pred_classes[keep], found.scores[keep].float()[:, None, None] * masks
            )  # T_c(x)
            share = evidence / evidence.sum(dim=0, keepdim=True).clamp_min(1.0)
            things = semantic[index, 0:1] * share
            void = semantic.new_zeros(1, height, width)
            maps.append(torch.cat([void, things, void, semantic[index, 1:]], dim=0))
        result = torch.stack(maps)
        assert result.shape[1] == NUM_CLASSES
        return result


def _resolve_panoptic_weights(weights: Path | None) -> ResolvedWeights:
    """detectron2 present and a weights file advseg may load: a .pkl only when the user named it."""
    _require_detectron2()
    if weights is not None:
        return resolve_weights(WEIGHTS.name, weights)
    try:  # never loaded unnamed (it is a pickle and no verified sha256 is recorded), but say where it is
        found = resolve_weights(WEIGHTS.name).path
    except WeightsNotFoundError:
        raise WeightsNotFoundError(
            f"the panoptic-fpn backend loads only a weights file you name (a .pkl is a pickle): "
            f"{WEIGHTS.how_to_get} and pass it with --weights PATH") from None
    raise WeightsNotFoundError(f"found {found}, but advseg unpickles only a .pkl you name (no verified sha256 "
                               f"of {WEIGHTS.filename} is recorded): pass it with --weights {found}")


@register_weights_check("panoptic-fpn")
def check_panoptic_fpn_weights(weights: Path | None) -> str:
    resolved = _resolve_panoptic_weights(weights)
    return f"{resolved.path} ({resolved.source})"


@register_backend("panoptic-fpn")
def build_panoptic_fpn(
    weights: Path | None, device: torch.device, precision: str = "fp32"
) -> PanopticFPNSegmenter:
    """Factory of the registry: detectron2 present, weights named by the user, model built from config."""
    resolved = _resolve_panoptic_weights(weights)
    cfg = panoptic_fpn_config(device)
    network = build_network(cfg)
    load_weights(network, resolved.path)
    return PanopticFPNSegmenter(network, cfg, device, precision, weights_record=resolved.as_record())
