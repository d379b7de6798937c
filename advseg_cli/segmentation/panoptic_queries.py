"""Panoptic post-processing of mask-classification outputs (Mask2Former), batched on the device.

A mask-classification model gives, per image, Q queries, each with class logits over the model's
K classes plus a "no object" class, and a mask logit map. This module turns them into

* hard panoptic segments with the rules of transformers' ``post_process_panoptic_segmentation``
  (:func:`panoptic_segments`), computed for the whole batch at once with tensor operations instead
  of a Python loop over images and queries;
* soft per-pixel class probabilities (:func:`soft_class_probs`), differentiable, for the training loss.

The rules of the hard result, step by step (``s_q``, ``c_q``: score and class of query q):

1. ``p_q = softmax(class_logits_q)``; ``s_q = max_k p_q[k]`` and ``c_q = argmax_k p_q[k]`` over all
   K+1 classes. A query is *kept* when ``c_q`` is not the null class and ``s_q > score_threshold``.
2. Mask probabilities: mask logits are resized bilinearly to 384x384 (transformers' fixed
   post-processing size), turned into ``sigmoid``, resized bilinearly to the output size, and weighted
   by the score: ``w_q(x) = s_q * sigmoid(...)``.
3. Every pixel goes to the kept query with the largest ``w_q(x)`` (the first one on ties).
4. A kept query becomes a segment when the area it won is > 0, its own area ``#{x: w_q(x) >=
   mask_threshold}`` is > 0 and ``won / own > overlap_threshold`` (drops fragments of queries that
   lost most of their mask). Pixels won by a query that is not a segment are void (label 0).
5. Segment ids count from 1 in query order; queries of a class in ``fuse_classes`` (stuff) share the
   id of the first segment of their class.

Known difference in step 5: transformers (issue huggingface/transformers#23461, open) resets its id
counter to the reused id when a fused class repeats, so a later segment can get the id of an existing
one. We keep ids unique (as the original Mask2Former code does); the test compares against transformers
exactly whenever its ids do not collide. The per-pixel *labels*, which are all advseg stores, do not
depend on segment ids at all.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from advseg_cli.segmentation.classes import NUM_CLASSES

# transformers resizes mask logits to this size before anything else in its panoptic post-processing.
REFERENCE_MASK_SIZE = (384, 384)


@dataclasses.dataclass(frozen=True)
class QueryThresholds:
    """Thresholds of the panoptic post-processing (defaults: transformers' own)."""

    score: float = 0.5  # keep a query when its best class probability is above this
    mask: float = 0.5  # a pixel is inside a query's own mask when score * mask prob >= this
    overlap: float = 0.8  # a query is a segment when it wins more than this fraction of its own mask

    def as_dict(self) -> dict[str, float]:
        return {"score": self.score, "mask": self.mask, "overlap": self.overlap}


@dataclasses.dataclass(frozen=True)
class PanopticSegments:
    """The panoptic result of a batch; all tensors on the device of the inputs."""

    segment_ids: Tensor  # [N,H,W] int64, 0 = void, 1.. = segment id
    labels: Tensor  # [N,H,W] uint8, 135-class layout
    query_segment: Tensor  # [N,Q] int64, the segment id a query contributed to (0 = none)
    query_class: Tensor  # [N,Q] int64, the model's class of each query (K = null)
    query_score: Tensor  # [N,Q] float32, the probability of that class
    query_fused: Tensor  # [N,Q] bool, the query's class is one whose segments are fused (stuff)

    def segments_info(self, index: int) -> list[dict]:
        """transformers' ``segments_info`` of image ``index``: one entry per query that is part of a
        segment, in query order (``id``, ``label_id``, ``was_fused``, ``score`` rounded to 6 places)."""
        rows = zip(
            self.query_segment[index].tolist(),
            self.query_class[index].tolist(),
            self.query_fused[index].tolist(),
            self.query_score[index].tolist(),
            strict=True,
        )
        return [
            {"id": segment, "label_id": label, "was_fused": fused, "score": round(score, 6)}
            for segment, label, fused, score in rows
            if segment != 0
        ]


def kept_queries_first(class_logits: Tensor, mask_logits: Tensor, score_threshold: float) -> tuple[Tensor, Tensor]:
    """Only the queries that can become segments, in their original order: [N,K,C], [N,K,h,w].

    Panoptic post-processing ignores a query whose best class is "no object" or whose score is at most
    the threshold, so dropping those before the full-resolution mask work changes no result (the
    kept queries keep their relative order, hence their segment ids and argmax tie-breaks). K is the
    largest number kept in any image of the batch (at least 1); shorter rows are padded with dropped
    queries. A trained model keeps few of its 100 queries per image, so most of the full-resolution work goes.
    """
    scores, classes = F.softmax(class_logits.float(), dim=-1).max(dim=-1)
    kept = (classes != class_logits.shape[-1] - 1) & (scores > score_threshold)
    count = max(1, int(kept.sum(dim=1).max()))
    if count == class_logits.shape[1]:
        return class_logits, mask_logits
    order = torch.sort((~kept).to(torch.int8), dim=1, stable=True).indices[:, :count]  # kept first, in order
    chosen_classes = torch.gather(class_logits, 1, order[:, :, None].expand(-1, -1, class_logits.shape[-1]))
    chosen_masks = torch.gather(mask_logits, 1, order[:, :, None, None].expand(-1, -1, *mask_logits.shape[-2:]))
    return chosen_classes, chosen_masks


def mask_probabilities(
    mask_logits: Tensor, output_size: tuple[int, int], padded_size: tuple[int, int]
) -> Tensor:
    """[N,Q,h,w] mask logits -> [N,Q,H,W] probabilities, resized as transformers' post-processing does.

    ``padded_size`` is the size the network saw (the input padded to a multiple of 32); the masks are
    resized to it and cropped to ``output_size``, so padding never counts as image area. Without
    padding this is exactly transformers' 384x384 -> sigmoid -> target-size chain.
    """
    logits = F.interpolate(
        mask_logits.float(), size=REFERENCE_MASK_SIZE, mode="bilinear", align_corners=False
    )
    probs = F.interpolate(logits.sigmoid(), size=padded_size, mode="bilinear", align_corners=False)
    return probs[..., : output_size[0], : output_size[1]]


def _first_segment_ids(kept_segment: Tensor, query_class: Tensor, fuse: Tensor) -> Tensor:
    """Segment id per query: a new id for each segment in query order, except that a segment of a
    fused class takes the id of the first segment of the same class. [N,Q] bool, [N,Q], [K+1] -> [N,Q]."""
    num_queries = kept_segment.shape[1]
    fused = kept_segment & fuse[query_class]
    order = torch.arange(num_queries, device=kept_segment.device)
    earlier = order.view(1, 1, -1) < order.view(1, -1, 1)  # [1,Q(q),Q(p)]: p before q
    same_fused_class = (
        fused.unsqueeze(1) & fused.unsqueeze(2) & (query_class.unsqueeze(1) == query_class.unsqueeze(2))
    )  # [N,Q,Q]
    repeat_of = same_fused_class & earlier  # [n,q,p]: p is an earlier segment q merges into
    is_repeat = repeat_of.any(dim=2)
    is_new = kept_segment & ~is_repeat
    new_ids = torch.cumsum(is_new.long(), dim=1) * is_new
    first = repeat_of.float().argmax(dim=2)  # the first earlier segment of the class (when any)
    repeated_ids = torch.gather(new_ids, 1, first)
    return torch.where(is_new, new_ids, torch.where(is_repeat, repeated_ids, torch.zeros_like(new_ids)))


def panoptic_segments(
    class_logits: Tensor,
    mask_probs: Tensor,
    lut: Tensor,
    thresholds: QueryThresholds,
    fuse_classes: Tensor,
) -> PanopticSegments:
    """Batched panoptic post-processing (module docstring, steps 1-5).

    class_logits: [N,Q,K+1]; mask_probs: [N,Q,H,W] from :func:`mask_probabilities`;
    lut: [K] our 135-layout label of each model class; fuse_classes: [K] bool (stuff classes).
    """
    num_logits = class_logits.shape[-1]
    null_class = num_logits - 1
    scores, classes = F.softmax(class_logits.float(), dim=-1).max(dim=-1)  # [N,Q]
    kept = (classes != null_class) & (scores > thresholds.score)

    weighted = mask_probs * scores[:, :, None, None]  # [N,Q,H,W]
    contest = torch.where(kept[:, :, None, None], weighted, torch.full_like(weighted, -1.0))
    winner = contest.argmax(dim=1)  # [N,H,W]; dropped queries (-1) never win against kept ones (>= 0)

    won_area = torch.zeros_like(scores, dtype=torch.long).scatter_add_(
        1, winner.flatten(1), torch.ones_like(winner.flatten(1))
    )  # [N,Q]: pixels each query won
    own_area = (weighted >= thresholds.mask).flatten(2).sum(dim=2)  # [N,Q]
    ratio = won_area.float() / own_area.clamp_min(1).float()
    is_segment = kept & (won_area > 0) & (own_area > 0) & (ratio > thresholds.overlap)

    fuse_classes, lut = fuse_classes.to(class_logits.device), lut.to(class_logits.device)
    fuse_with_null = torch.cat([fuse_classes, fuse_classes.new_zeros(1)])
    query_segment = _first_segment_ids(is_segment, classes, fuse_with_null)
    segment_ids = torch.gather(query_segment, 1, winner.flatten(1)).view_as(winner)

    lut_with_null = torch.cat([lut, lut.new_zeros(1)])
    query_label = torch.where(is_segment, lut_with_null[classes], torch.zeros_like(classes))
    labels = torch.gather(query_label, 1, winner.flatten(1)).view_as(winner).to(torch.uint8)
    return PanopticSegments(segment_ids, labels, query_segment, classes, scores, fuse_with_null[classes])


def soft_class_probs(
    class_logits: Tensor,
    mask_logits: Tensor,
    lut: Tensor,
    output_size: tuple[int, int],
    padded_size: tuple[int, int],
) -> Tensor:
    """Differentiable per-pixel class probabilities in the 135-class layout, [N,135,H,W].

    ``P[k](x) = sum_q softmax(class_logits_q)[k] * sigmoid(mask_logits_q(x))`` for the K model classes
    (the null class dropped) -- Mask2Former's semantic inference -- computed at the mask resolution,
    resized bilinearly to the padded input size and cropped to ``output_size``, then normalised so the
    classes of a pixel sum to at most 1: ``P / max(1, sum_k P[k])``. The K channels land on our labels
    through ``lut``; channels 0 (unlabeled) and 81 (merged "things") stay 0.
    """
    class_probs = F.softmax(class_logits.float(), dim=-1)[..., :-1]  # [N,Q,K]
    semantic = torch.einsum("nqk,nqhw->nkhw", class_probs, mask_logits.float().sigmoid())
    semantic = F.interpolate(semantic, size=padded_size, mode="bilinear", align_corners=False)
    semantic = semantic[..., : output_size[0], : output_size[1]]
    semantic = semantic / semantic.sum(dim=1, keepdim=True).clamp_min(1.0)
    layout = semantic.new_zeros(semantic.shape[0], NUM_CLASSES, *semantic.shape[2:])
    return layout.index_copy(1, lut.to(semantic.device), semantic)
