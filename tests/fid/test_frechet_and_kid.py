"""The distances themselves, against values derived by hand (no network involved)."""

from __future__ import annotations

import numpy as np
import pytest
from pytorch_fid.inception import InceptionV3

from advseg_cli.commands.fid import FID_DIMS
from advseg_cli.errors import AdvsegError
from advseg_cli.fid import frechet_distance, kernel_inception_distance, polynomial_mmd2


def random_covariance(rng: np.random.Generator, dims: int) -> np.ndarray:
    factor = rng.normal(size=(dims, dims))
    return factor @ factor.T / dims + 0.1 * np.eye(dims)


def test_equal_covariances_leave_the_squared_distance_of_the_means() -> None:
    rng = np.random.default_rng(0)
    sigma = random_covariance(rng, 16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(float(np.sum((mu1 - mu2) ** 2)), rel=1e-9)


def test_diagonal_covariances_give_the_closed_form() -> None:
    """For commuting (diagonal) covariances Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(a) - sqrt(b))^2."""
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_singular_covariances_do_not_print_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """pytorch-fid prints (stdout) and scipy warns about singular products; both become notes, so
    ``--json`` output stays parseable, and a square root that does not exist is one clear error."""
    singular = np.diag([1.0, 0.0])
    notes: list[str] = []
    value = frechet_distance(np.zeros(2), singular, np.ones(2), singular, notes)
    assert value == pytest.approx(2.0)  # equal covariances: |mu1 - mu2|^2
    assert any("singular" in note for note in notes)
    no_square_root = np.array([[0.0, 1.0], [1.0, 0.0]])  # diag(1, 0) times it is nilpotent
    with pytest.raises(AdvsegError, match="numerically undefined"):
        frechet_distance(np.zeros(2), singular, np.ones(2), no_square_root, [])
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def brute_force_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased estimator written out pair by pair (Binkowski et al. 2018, eq. for KID)."""
    m, d = x.shape
    kernel = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    within = sum(kernel(x[i], x[j]) + kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    cross = sum(kernel(x[i], y[j]) for i in range(m) for j in range(m))
    return within / (m * (m - 1)) - 2.0 * cross / (m * m)


def test_polynomial_mmd_is_the_unbiased_estimator() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 5)), rng.normal(loc=0.3, size=(7, 5))
    assert polynomial_mmd2(x, y) == pytest.approx(brute_force_mmd2(x, y), rel=1e-10)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two() -> None:
    rng = np.random.default_rng(4)
    features = rng.normal(size=(400, 32)).astype(np.float32)
    same_distribution = rng.normal(size=(400, 32)).astype(np.float32)
    other = rng.normal(loc=0.5, size=(400, 32)).astype(np.float32)
    different = kernel_inception_distance(features, other, subsets=20, subset_size=100)
    assert different.mean > 0.5 and different.mean > 5 * different.std
    assert different.subset_size == 100 and different.subsets == 20
    # independent subsets of one set share some images (their k(x, x) enters the cross term): ~0, not 0
    itself = kernel_inception_distance(features, features, subsets=20, subset_size=100)
    assert abs(itself.mean) < 0.05 * different.mean
    independent = kernel_inception_distance(features, same_distribution, subsets=20, subset_size=100)
    assert abs(independent.mean) < 0.01 * different.mean
    assert kernel_inception_distance(features, other, subsets=20, subset_size=100) == different  # seeded


def test_kid_with_all_images_in_one_subset_equals_the_estimator_on_all() -> None:
    """With subset size = set size, subsets are permutations, and the estimator ignores order."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(9, 6)), rng.normal(loc=0.2, size=(9, 6))
    kid = kernel_inception_distance(x, y, subsets=3, subset_size=1000)
    assert kid.subset_size == 9
    assert kid.mean == pytest.approx(brute_force_mmd2(x, y), rel=1e-9)
    assert kid.std == pytest.approx(0.0, abs=1e-9)


def test_dims_choices_are_pytorch_fids() -> None:
    assert FID_DIMS == tuple(InceptionV3.BLOCK_INDEX_BY_DIM)
