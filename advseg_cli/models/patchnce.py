"""CUT's PatchNCE loss (Park, Efros, Zhang, Zhu, ECCV 2020): the parts that are not a GAN.

Behaviour follows the public code (github.com/taesungp/contrastive-unpaired-translation, models/patchnce.py,
models/networks.py ``PatchSampleF``, models/cut_model.py), written anew:

* :func:`encoder_features` runs the first layers of our ResNet generator and keeps the outputs of the
  chosen ones (the public ``netG(x, nce_layers, encode_only=True)``).
* :class:`PatchProjection` is the public ``mlp_sample`` head: per layer, the same randomly chosen spatial
  positions of every image of the batch, a two-layer MLP (Linear, ReLU, Linear) to ``channels`` features,
  L2 normalisation. Its MLPs are created **lazily**, from the widths of the first features it sees: the
  public code's ``data_dependent_initialize`` runs the first batch to create them, and only then creates
  their optimizer. It keeps that behaviour; :meth:`PatchProjection.create_from_state` rebuilds the MLPs
  from a checkpoint's weights instead, so a resume does not need a batch.
* :func:`patch_nce_loss` is the public ``PatchNCELoss`` with ``nce_includes_all_negatives_from_minibatch
  False``: for each sampled patch of the output (the query), the positive is the input's patch at the same
  position, the negatives are the input's *other* sampled patches **of the same image**; the logits, divided
  by the temperature, go through a cross-entropy whose target is the positive. The key side is detached.

Shapes: features [N,C,H,W]; sampled, projected patches [N*P, channels] (image-major: rows n*P .. n*P+P-1 are
image n's P patches, in the order of the sampled positions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advseg_cli.models.networks import init_weights

# The public code puts -10 (not -inf) on the similarity of a query with the key at its own position among
# the negatives (the positive is already the logit in column 0): "exp(-10), almost zero". Kept, so that
# the loss values are the public code's.
SELF_NEGATIVE_LOGIT = -10.0
NORM_EPSILON = 1e-7  # the public Normalize(2): x / (||x|| + 1e-7)


def parse_layers(text: str) -> tuple[int, ...]:
    """'0,4,7,10,14' -> (0, 4, 7, 10, 14); raises ValueError for anything else (the config says which option)."""
    parts = [part.strip() for part in text.split(",")]
    if not parts or any(not part.isdigit() for part in parts):
        raise ValueError(f"expected comma-separated layer indices such as 0,4,7,10,14, got {text!r}")
    layers = tuple(int(part) for part in parts)
    if list(layers) != sorted(set(layers)):
        raise ValueError(f"layer indices must be increasing and distinct, got {text!r}")
    return layers


def encoder_features(generator: nn.Module, images: Tensor, layers: Sequence[int]) -> list[Tensor]:
    """Outputs of ``generator.model[i]`` for i in ``layers``, computing no layer after the last one.

    Our ResNet generator is one ``model`` Sequential, as the public CUT generator; index 0 is its reflection
    padding, so layer 0's "features" are the (padded) pixels themselves.
    """
    wanted, last = set(layers), max(layers)
    features, x = [], images
    for index, layer in enumerate(generator.model):
        x = layer(x)
        if index in wanted:
            features.append(x)
        if index == last:
            break
    return features


def l2_normalise(x: Tensor) -> Tensor:
    """Rows scaled to unit length (the public code's epsilon, so a zero row stays zero instead of NaN)."""
    return x / (x.pow(2).sum(1, keepdim=True).sqrt() + NORM_EPSILON)


class PatchProjection(nn.Module):
    """CUT's ``netF`` (``mlp_sample``): sample patches of each feature map, project them, L2-normalise.

    Holds no MLP until :meth:`create` (or :meth:`create_from_state`) is called, so it has no parameters and
    no state-dict entries before the first batch, as in the public code.
    """

    def __init__(self, channels: int = 256, init_type: str = "xavier", init_gain: float = 0.02) -> None:
        super().__init__()
        self.channels = channels  # the public netF_nc
        self.init_type, self.init_gain = init_type, init_gain
        self.mlps = nn.ModuleList()

    @property
    def initialised(self) -> bool:
        return len(self.mlps) > 0

    def _mlp(self, width: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(width, self.channels), nn.ReLU(), nn.Linear(self.channels, self.channels))

    def create(self, features: Sequence[Tensor]) -> None:
        """One MLP per feature map, sized by its channels, on its device; the public init (global RNG)."""
        if self.initialised:
            raise RuntimeError("the projection head is already created")
        for feature in features:
            self.mlps.append(self._mlp(feature.shape[1]).to(feature.device))
        init_weights(self, self.init_type, self.init_gain)

    def create_from_state(self, state: Mapping[str, Tensor], prefix: str, device: torch.device) -> None:
        """Rebuild the MLPs that ``state`` (a model state dict, keys under ``prefix``) holds weights for."""
        widths = []
        while f"{prefix}mlps.{len(widths)}.0.weight" in state:
            widths.append(state[f"{prefix}mlps.{len(widths)}.0.weight"].shape[1])
        for width in widths:
            self.mlps.append(self._mlp(width).to(device))

    @staticmethod
    def sample_positions(features: Sequence[Tensor], num_patches: int) -> list[Tensor]:
        """Per layer, ``min(num_patches, H*W)`` distinct positions, shared by every image of the batch.

        Drawn from the global torch CPU generator (the public code uses NumPy's), so that a checkpoint's RNG
        state makes a resumed run draw the same patches.
        """
        positions = []
        for feature in features:
            count = feature.shape[2] * feature.shape[3]
            positions.append(torch.randperm(count)[:min(num_patches, count)].to(feature.device))
        return positions

    def forward(self, features: Sequence[Tensor], positions: Sequence[Tensor]) -> list[Tensor]:
        """[N,C,H,W] per layer -> [N*P, channels] unit rows per layer, at the given positions."""
        if not self.initialised:
            self.create(features)  # the public PatchSampleF creates its MLPs in its first forward
        if len(features) != len(self.mlps):
            raise ValueError(f"{len(features)} feature maps for a projection head of {len(self.mlps)} layers")
        projected = []
        for feature, where, mlp in zip(features, positions, self.mlps):
            patches = feature.permute(0, 2, 3, 1).flatten(1, 2)[:, where, :].flatten(0, 1)  # [N*P, C]
            projected.append(l2_normalise(mlp(patches).float()))
        return projected


def patch_nce_loss(query: Tensor, key: Tensor, batch_size: int, temperature: float) -> Tensor:
    """Per-patch PatchNCE losses [N*P] of projected output patches ``query`` against input patches ``key``.

    ``query`` and ``key`` are [N*P, C], image-major. For patch i of image n: logits = (q_i.k_i, q_i.k_j for
    every j of image n, with -10 in place of j = i) / temperature, loss = cross-entropy with target 0.
    Only patches of the same image are negatives (the public default for CUT and FastCUT).
    """
    if query.shape != key.shape or query.dim() != 2 or query.shape[0] % batch_size:
        raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)} are not [N*P, C] with N={batch_size}")
    query, key = query.float(), key.detach().float()
    dim = query.shape[1]
    q = query.view(batch_size, -1, dim)  # [N,P,C]
    k = key.view(batch_size, -1, dim)
    patches = q.shape[1]
    positive = (q * k).sum(-1, keepdim=True)  # [N,P,1]
    similarity = torch.bmm(q, k.transpose(1, 2))  # [N,P,P]: query i of image n against key j of image n
    own_position = torch.eye(patches, dtype=torch.bool, device=q.device)[None]
    negatives = similarity.masked_fill(own_position, SELF_NEGATIVE_LOGIT)
    logits = torch.cat([positive, negatives], dim=2).flatten(0, 1) / temperature  # [N*P, 1+P]
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target, reduction="none")
