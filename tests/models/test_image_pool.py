"""The image pool: CycleGAN's behaviour, plus a state that makes a resumed run draw the same images."""

from __future__ import annotations

import io

import pytest
import torch

from advseg_cli.models.image_pool import ImagePool


def numbered(start: int, count: int = 1) -> torch.Tensor:
    """Images whose every pixel is their own number, so a returned image says where it came from."""
    return torch.arange(start, start + count, dtype=torch.float32).view(count, 1, 1, 1).expand(count, 2, 3, 3).clone()


def ids(images: torch.Tensor) -> list[int]:
    return [int(image[0, 0, 0]) for image in images]


def test_size_zero_passes_through_detached() -> None:
    pool = ImagePool(0)
    images = numbered(0, 3).requires_grad_()
    out = pool.query(images)
    assert torch.equal(out, images) and not out.requires_grad and len(pool) == 0


def test_fills_first_then_returns_an_older_image_about_half_the_time() -> None:
    pool = ImagePool(4, seed=3)
    assert ids(pool.query(numbered(0, 4))) == [0, 1, 2, 3]  # filling: the new images themselves
    returned = [ids(pool.query(numbered(n)))[0] for n in range(4, 404)]
    older = sum(1 for n, got in zip(range(4, 404), returned) if got != n)
    assert 160 < older < 240  # p = 1/2 over 400 draws
    assert all(got <= n for n, got in zip(range(4, 404), returned))  # never an image from the future
    assert len(pool) == 4
    # Swaps are consistent: replaying them on the initial content gives what the pool holds now.
    held = {0, 1, 2, 3}
    for n, got in zip(range(4, 404), returned):
        if got != n:
            assert got in held
            held = (held - {got}) | {n}
    assert set(ids(torch.stack(pool.images))) == held


def test_returned_images_are_copies_not_views_of_the_batch() -> None:
    pool = ImagePool(2)
    batch = numbered(7, 2)
    pool.query(batch)
    batch.fill_(-1)
    assert ids(torch.stack(pool.images)) == [7, 8]


def test_state_round_trip_continues_the_same_sequence() -> None:
    pool = ImagePool(5, seed=11)
    for n in range(0, 30, 3):
        pool.query(numbered(n, 3))
    buffer = io.BytesIO()
    torch.save(pool.state_dict(), buffer)
    expected = [ids(pool.query(numbered(n, 3))) for n in range(30, 90, 3)]

    restored = ImagePool(5, seed=999)  # a different seed: the state must override it
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert [ids(restored.query(numbered(n, 3))) for n in range(30, 90, 3)] == expected
    # And the sequence is not trivially the same for any pool: a fresh one with another seed differs.
    other = ImagePool(5, seed=12)
    for n in range(0, 30, 3):
        other.query(numbered(n, 3))
    assert [ids(other.query(numbered(n, 3))) for n in range(30, 90, 3)] != expected


def test_state_of_a_partly_filled_pool_and_size_checks() -> None:
    pool = ImagePool(5)
    pool.query(numbered(0, 2))
    fresh = ImagePool(5)
    fresh.load_state_dict(pool.state_dict())
    assert ids(torch.stack(fresh.images)) == [0, 1]
    with pytest.raises(ValueError, match="size 5"):
        ImagePool(4).load_state_dict(pool.state_dict())


def test_storage_dtype_keeps_the_query_dtype_on_return() -> None:
    pool = ImagePool(1, seed=0, storage_dtype=torch.float16)
    pool.query(torch.full((1, 2, 2, 2), 1 / 3))
    assert pool.images[0].dtype == torch.float16
    returned = [pool.query(torch.zeros(1, 2, 2, 2)) for _ in range(20)]
    older = [r for r in returned if float(r.abs().max()) > 0]
    assert older and all(r.dtype == torch.float32 for r in older)
    assert float(older[0][0, 0, 0, 0]) == pytest.approx(1 / 3, abs=1e-3)
