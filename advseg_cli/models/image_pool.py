"""The history buffer of generated images (Shrivastava et al. 2017) that CycleGAN's discriminators see.

Behaviour of the CycleGAN code base's pool, per image of a queried batch: while the pool holds fewer
than ``size`` images, the new image is stored and returned; once full, with probability 1/2 a random
stored image is returned and the new one takes its place, otherwise the new image is returned.
``size`` 0 passes the batch through.

Unlike the code base's pool (which draws from Python's global ``random``), this one draws from its own
``torch.Generator`` and its :meth:`state_dict` holds that generator's state and the stored images, so a
resumed training queries exactly what an uninterrupted one would have.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

STATE_VERSION = 1


class ImagePool:
    """A pool of up to ``size`` earlier generated images (or segmentation maps), with a reproducible draw.

    Args:
        size: how many images to keep; 0 turns the pool into a pass-through.
        seed: seed of the pool's own generator (give each pool, and each DDP rank, its own).
        storage_dtype: dtype of the stored copies (None keeps the query's dtype). float16 halves the
            memory of a pool of 135-channel maps; images returned from storage are cast back to the
            query's dtype. Resume stays exact, since the checkpoint holds the stored copies.
    """

    def __init__(self, size: int, seed: int = 0, storage_dtype: torch.dtype | None = None) -> None:
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size = size
        self.storage_dtype = storage_dtype
        self.images: list[Tensor] = []  # each [C,H,W], detached
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    def _store(self, image: Tensor) -> Tensor:
        # A copy, never a view: a view would keep the whole queried batch alive in memory.
        return image.to(dtype=self.storage_dtype or image.dtype, copy=True)

    def query(self, images: Tensor) -> Tensor:
        """[N,C,H,W] new images -> [N,C,H,W] images for the discriminator (detached), mixing in older ones."""
        images = images.detach()
        if self.size == 0:
            return images
        returned = []
        for image in images:
            if len(self.images) < self.size:
                self.images.append(self._store(image))
                returned.append(image)
                continue
            use_stored = float(torch.rand((), generator=self.generator)) > 0.5
            if use_stored:
                index = int(torch.randint(0, self.size, (), generator=self.generator))
                older = self.images[index].to(device=image.device, dtype=image.dtype)
                self.images[index] = self._store(image)
                returned.append(older)
            else:
                returned.append(image)
        return torch.stack(returned, 0)

    def state_dict(self) -> dict[str, Any]:
        """Everything the next queries depend on; tensors only, so ``torch.load(weights_only=True)`` reads it."""
        # Stacked on the CPU: a checkpoint goes to disk anyway, and a full pool of 135-channel maps
        # stacked on the GPU would need as much memory again.
        stored = torch.stack([image.cpu() for image in self.images], 0) if self.images else torch.empty(0)
        return {
            "version": STATE_VERSION,
            "size": self.size,
            "images": stored,
            "count": len(self.images),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a pool saved by :meth:`state_dict` (a pool of another size is refused: it would not
        continue the same sequence)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"image pool state version {state.get('version')!r} is not {STATE_VERSION}")
        if int(state["size"]) != self.size:
            raise ValueError(f"image pool state is for size {state['size']}, this pool has size {self.size}")
        count = int(state["count"])
        stored = state["images"]
        self.images = [stored[i].clone() for i in range(count)]
        self.generator.set_state(state["generator"].cpu())
