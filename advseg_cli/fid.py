"""``advseg fid``: the paper's metric, with exactly the numbers of ``python -m pytorch_fid``.

The paper (and its public code) computes FID with the ``pytorch-fid`` package between the generated
test images and the real test photos. We use that package itself for everything that decides the
number: its ``InceptionV3`` wrapper around ``fid_inception_v3()`` (bilinear resize to 299x299 with
``align_corners=False``, scaling to [-1, 1], the FID variant's pooling patches), its 2048-d pool3
features and its ``calculate_frechet_distance``. Images reach the network exactly as pytorch-fid
feeds them: ``PIL.Image.open(path).convert("RGB")``, ``ToTensor`` (uint8 / 255 as float32), batches
of ``batch_size`` consecutive files in sorted order, features kept as float64 for ``np.mean`` and
``np.cov(rowvar=False)``. On every folder pytorch-fid accepts, the features are therefore the same
floats and the FID the same value.

What we add on top of pytorch-fid:
- folders are searched recursively and file extensions in any case (pytorch-fid globs one level,
  lower-case ``bmp jpg jpeg pgm png ppm tif tiff webp`` only); ``.gif`` and ``.pbm`` are read too;
  hidden files are skipped (pytorch-fid's glob would include ``.x.png``);
- images of different sizes in one folder (pytorch-fid's DataLoader cannot stack them): each is
  resized to 299x299 on its own with the very interpolation the network applies, which then is an
  exact identity, so every image gets the features it would get alone in pytorch-fid;
- files that cannot be decoded are reported and skipped instead of ending the run;
- ``decode="advseg"`` optionally reads images like the other stages (EXIF orientation applied,
  transparency composited on white, 16-bit scaled) where pytorch-fid ignores EXIF, drops alpha and
  clips 16-bit samples; the default stays pytorch-fid's decoding;
- the statistics of a REAL folder are cached, keyed by the folder's content and the settings;
- Kernel Inception Distance from the same features;
- weights are resolved by :mod:`advseg_cli.weights` plus torch hub's cache and loaded with
  ``weights_only=True``; nothing is downloaded by pytorch-fid.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import platform
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_fid
import pytorch_fid.inception
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from pytorch_fid.fid_score import calculate_frechet_distance
from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import to_tensor

from advseg_cli import __version__
from advseg_cli.devices import resolve_device
from advseg_cli.errors import AdvsegError, ImageDecodeError, IncompatibleInputError, WeightsMismatchError
from advseg_cli.files import atomic_path, sha256_file
from advseg_cli.images import list_images, read_rgb
from advseg_cli.interrupts import leave_stop_signals_to_the_main_process
from advseg_cli.progress import progress
from advseg_cli.runrecord import RunRecord, read_record, record_path_for
from advseg_cli.weights import ResolvedWeights, WeightsSpec, advseg_home, register_weights, resolve_weights

FID_DIMS = tuple(InceptionV3.BLOCK_INDEX_BY_DIM)  # 64, 192, 768, 2048 (pool3 = 2048, the paper's)
DECODERS = ("pytorch-fid", "advseg")
INCEPTION_INPUT = (299, 299)  # what InceptionV3(resize_input=True) resizes every batch to
STATS_CACHE_SCHEMA = 1
KID_DEGREE = 3  # polynomial kernel k(x, y) = (x.y / d + 1) ** 3, as in the KID paper and torch-fidelity
KID_SEED = 0

INCEPTION_WEIGHTS = register_weights(
    WeightsSpec(
        name="inception-fid",
        filename=Path(FID_WEIGHTS_URL).name,  # pt_inception-2015-12-05-6726825d.pth
        option="--weights",
        used_by="advseg fid",
        how_to_get=f"download it from {FID_WEIGHTS_URL}",
        sha256=None,  # not known to us: never downloaded automatically (our resolver needs a hash)
        url=FID_WEIGHTS_URL,
        torch_hub=True,  # pytorch-fid downloads it into torch hub's cache
    )
)


# ----------------------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class FidConfig:
    """Every option of the fid stage, resolved; it goes into the JSON result and run records."""

    dims: int = 2048  # Inception feature block: 64, 192, 768 or 2048 (pool3, the paper's FID)
    batch_size: int = 50  # images per Inception forward pass (pytorch-fid's default)
    device: str = "auto"
    workers: int = 0  # DataLoader processes that decode images
    decode: str = "pytorch-fid"  # pytorch-fid: PIL .convert("RGB") as pytorch-fid; advseg: read_rgb
    weights: Path | None = None  # explicit Inception weights file (--weights)
    cache: bool = True  # read/write the REAL folder's statistics in $ADVSEG_HOME/fid-stats
    kid: bool = False  # also compute the Kernel Inception Distance
    kid_subsets: int = 100  # KID: number of random subsets averaged (torch-fidelity / clean-fid: 100)
    kid_subset_size: int = 1000  # KID: images per subset, clamped to the smaller side's count
    quiet: bool = False  # no progress bar

    def validate(self) -> None:
        if self.dims not in FID_DIMS:
            raise AdvsegError(f"--dims: {self.dims} is not one of {', '.join(map(str, FID_DIMS))}")
        if self.decode not in DECODERS:
            raise AdvsegError(f"--decode: unknown {self.decode!r}; use one of {', '.join(DECODERS)}")
        for name in ("batch_size", "kid_subsets"):
            if getattr(self, name) < 1:
                raise AdvsegError(f"--{name.replace('_', '-')}: must be >= 1")
        if self.kid_subset_size < 2:
            raise AdvsegError("--kid-subset-size: must be >= 2")
        if self.workers < 0:
            raise AdvsegError("--workers: must be >= 0")

    def as_record(self) -> dict[str, Any]:
        return {key: (str(value) if isinstance(value, Path) else value)
                for key, value in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class SideStatistics:
    """One side of the comparison (REAL or FAKE): its Gaussian, and where it came from."""

    label: str  # "REAL" or "FAKE", for messages
    path: Path
    kind: str  # folder | stats
    mu: np.ndarray  # [dims] float64
    sigma: np.ndarray  # [dims, dims] float64
    features: np.ndarray | None  # [images, dims] float32, None for a mu/sigma-only statistics file
    images: int | None  # images that contributed (None: a statistics file that does not say)
    failures: list[dict[str, str]] = dataclasses.field(default_factory=list)  # {"input", "reason"}
    source: str = "computed"  # computed | cache | file
    cache_file: Path | None = None
    record: dict[str, Any] | None = None  # the run record beside a statistics file, if any

    @property
    def dims(self) -> int:
        return int(self.mu.shape[0])

    def as_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "source": self.source, "images": self.images,
                "failed": len(self.failures), "failures": self.failures, "dims": self.dims,
                "has_features": self.features is not None,
                "cache_file": str(self.cache_file) if self.cache_file else None}


@dataclasses.dataclass(frozen=True)
class KidResult:
    """Kernel Inception Distance: mean and standard deviation of the unbiased MMD^2 over subsets."""

    mean: float
    std: float
    subsets: int
    subset_size: int

    def as_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "subsets": self.subsets, "subset_size": self.subset_size,
                "kernel": f"(x.y/d + 1)^{KID_DEGREE}", "degree": KID_DEGREE, "gamma": "1/d", "coef0": 1,
                "estimator": "unbiased MMD^2", "seed": KID_SEED}


@dataclasses.dataclass
class FidResult:
    """What ``compute_fid`` found; the command prints ``FID: value`` or ``to_json()``."""

    fid: float
    kid: KidResult | None
    real: SideStatistics
    fake: SideStatistics
    config: FidConfig
    weights: ResolvedWeights | None  # None when both sides were statistics files (no network needed)
    device: str = "cpu"  # the resolved device the features were computed on
    notes: list[str] = dataclasses.field(default_factory=list)  # warnings worth showing the user

    def to_json(self) -> dict[str, Any]:
        return {
            "fid": self.fid,
            "kid": self.kid.as_json() if self.kid else None,
            "real": self.real.as_json(),
            "fake": self.fake.as_json(),
            "settings": {**self.config.as_record(), "device": self.device},
            "weights": self.weights.as_record() if self.weights else None,
            "versions": tool_versions(),
            "warnings": self.notes,
        }


def tool_versions() -> dict[str, str]:
    """Versions that can change the numbers (and advseg's own), for results and cache keys."""
    import scipy

    return {"advseg": __version__, "pytorch_fid": pytorch_fid.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "python": platform.python_version()}


# ----------------------------------------------------------------------------- weights and model
def resolve_inception_weights(explicit: Path | None = None) -> ResolvedWeights:
    """``--weights``, then ``$ADVSEG_HOME``, then torch hub's cache (where pytorch-fid puts it).

    The official file's sha256 is not known to us, so it is never downloaded; the error says where
    to put it.
    """
    return resolve_weights(INCEPTION_WEIGHTS.name, explicit)


def load_inception_state(path: Path) -> dict[str, torch.Tensor]:
    """The weights file as a state dict, unpickled safely (``weights_only=True``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling/format problem means: not the file we need
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsMismatchError(f"--weights {path}: not a loadable PyTorch state dict ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsMismatchError(f"--weights {path}: not a state dict of tensors (expected "
                                   f"{INCEPTION_WEIGHTS.filename})")
    return state


_PATCH_LOCK = threading.Lock()


def inception_from_state(state: dict[str, torch.Tensor], dims: int = 2048) -> InceptionV3:
    """pytorch-fid's own ``InceptionV3`` (FID variant) with the given weights, on the CPU, eval mode.

    ``fid_inception_v3()`` fetches its weights by URL through torch hub itself; we hand it our state
    dict instead, so the architecture, the block split and the forward are pytorch-fid's code while
    the bytes come from a file we resolved and unpickled with ``weights_only=True``. It loads them
    with ``strict=True``, which is our layout check.
    """
    def hand_over(url: str, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if url != FID_WEIGHTS_URL:
            raise WeightsMismatchError(f"pytorch-fid asked for unexpected weights {url}")
        return state

    with _PATCH_LOCK:
        original = pytorch_fid.inception.load_state_dict_from_url
        pytorch_fid.inception.load_state_dict_from_url = hand_over
        try:
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]], resize_input=True, normalize_input=True)
        except RuntimeError as exc:  # load_state_dict(strict=True): missing/unexpected keys, wrong shapes
            first = str(exc).strip().splitlines()[0]
            raise WeightsMismatchError(f"not the pt_inception-2015-12-05 layout ({first})") from None
        finally:
            pytorch_fid.inception.load_state_dict_from_url = original
    return model.eval().requires_grad_(False)


_MODEL_CACHE: dict[tuple[str, int, str], InceptionV3] = {}


def load_inception(weights: ResolvedWeights, dims: int, device: torch.device) -> InceptionV3:
    """The model for these weights, dims and device; kept for the next call in the same process."""
    key = (weights.sha256, dims, str(device))
    if key not in _MODEL_CACHE:
        state = load_inception_state(weights.path)
        try:
            model = inception_from_state(state, dims)
        except WeightsMismatchError as exc:
            raise WeightsMismatchError(f"{weights.path}: {exc}; pass the {INCEPTION_WEIGHTS.filename} file "
                                       "with --weights") from None
        _MODEL_CACHE.clear()  # one Inception (~95 MB) at a time is plenty
        _MODEL_CACHE[key] = model.to(device)
    return _MODEL_CACHE[key]


# ----------------------------------------------------------------------------- images -> features
def decode_like_pytorch_fid(path: Path) -> np.ndarray:
    """HxWx3 uint8 exactly as pytorch-fid decodes: ``Image.open(path).convert("RGB")``.

    (No EXIF rotation, alpha dropped, 16-bit clipped by Pillow: keeping this is what keeps the
    numbers equal to the paper's tool.)
    """
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(path, f"image too large ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(path, f"cannot decode image ({exc})") from None


def decode_image(path: Path, decode: str) -> torch.Tensor:
    """One image as pytorch-fid's ``ToTensor`` makes it: float32 CHW in [0, 1] (uint8 / 255)."""
    rgb = decode_like_pytorch_fid(path) if decode == "pytorch-fid" else read_rgb(path)
    return to_tensor(rgb if rgb.flags.writeable else rgb.copy())


class _ImageFiles(Dataset):
    """Decodes in DataLoader workers; a failure is returned (not raised) so the run goes on."""

    def __init__(self, files: list[Path], decode: str) -> None:
        self.files = files
        self.decode = decode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return index, decode_image(self.files[index], self.decode), ""
        except ImageDecodeError as exc:
            return index, None, exc.reason


def _as_list(items: list[Any]) -> list[Any]:
    """DataLoader collate that keeps items apart (module level so worker processes can pickle it)."""
    return items


def inception_input(images: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """A batch as pytorch-fid builds it: ``torch.stack`` of equal-sized images, moved to the device.

    Images of different sizes (which pytorch-fid cannot batch) are each resized to 299x299 alone,
    with the interpolation the network itself applies; the network's own resize is then exact.
    """
    if all(image.shape == images[0].shape for image in images):
        return torch.stack(images).to(device)  # [NCHW]
    resized = [F.interpolate(image[None].to(device), size=INCEPTION_INPUT, mode="bilinear", align_corners=False)
               for image in images]
    return torch.cat(resized)


@torch.inference_mode()
def inception_features(model: InceptionV3, batch: torch.Tensor) -> np.ndarray:
    """[N, dims] float32 features; blocks below pool3 are spatially averaged as pytorch-fid does."""
    prediction = model(batch)[0]
    if prediction.shape[2] != 1 or prediction.shape[3] != 1:
        prediction = F.adaptive_avg_pool2d(prediction, output_size=(1, 1))
    return prediction.squeeze(3).squeeze(2).cpu().numpy()


def folder_features(folder: Path, relatives: list[Path], model: InceptionV3, config: FidConfig,
                    device: torch.device, label: str) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Features of every decodable image (sorted order, batches of ``batch_size``) and the failures."""
    files = [folder / relative for relative in relatives]
    loader = DataLoader(_ImageFiles(files, config.decode), batch_size=min(config.batch_size, len(files)),
                        shuffle=False, drop_last=False, num_workers=config.workers, collate_fn=_as_list,
                        pin_memory=device.type == "cuda", worker_init_fn=leave_stop_signals_to_the_main_process)
    features = np.empty((len(files), config.dims), dtype=np.float32)
    done, failures = 0, []
    with progress(total=len(files), desc=f"fid {label}", quiet=config.quiet) as bar:
        for items in loader:
            images = []
            for index, image, reason in items:
                if image is None:
                    failures.append({"input": relatives[index].as_posix(), "reason": reason})
                else:
                    images.append(image)
            if images:
                batch_features = inception_features(model, inception_input(images, device))
                features[done:done + len(images)] = batch_features
                done += len(images)
            bar.update(len(items))
    return features[:done], failures


def gaussian_of(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-fid's statistics: mean and ``np.cov(rowvar=False)`` of the float64 features."""
    activations = features.astype(np.float64)
    return np.mean(activations, axis=0), np.cov(activations, rowvar=False)


# ----------------------------------------------------------------------------- distances
def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     notes: list[str] | None = None) -> float:
    """pytorch-fid's ``calculate_frechet_distance``, with its prints and warnings collected as notes.

    d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)). pytorch-fid prints to stdout when it has to
    regularise a singular product; that would corrupt ``--json`` output, so it is captured here.
    """
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise AdvsegError(f"statistics have different dims: {mu1.shape[0]} and {mu2.shape[0]}")
    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed):
        warnings.simplefilter("always")
        try:
            value = calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
        except ValueError as exc:  # "Imaginary component ..." of the matrix square root
            raise AdvsegError(f"FID is numerically undefined for these statistics ({exc}); this happens "
                              "with very few images: use more images than --dims per side") from None
    if notes is not None:
        notes.extend(line.strip() for line in printed.getvalue().splitlines() if line.strip())
        notes.extend(sorted({f"{w.category.__name__}: {w.message}" for w in caught
                             if not issubclass(w.category, DeprecationWarning)}))  # scipy's, not the user's
    return float(value)


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-sized feature sets under k(a, b) = (a.b / d + 1) ** 3.

    Within-set sums leave out the diagonal (k(x_i, x_i)) and divide by m(m-1); the cross term keeps
    all m^2 pairs: the estimator of the KID paper (Binkowski et al. 2018), as in torch-fidelity and
    clean-fid.
    """
    m, d = x.shape
    x, y = x.astype(np.float64), y.astype(np.float64)
    k_xx = (x @ x.T / d + 1) ** KID_DEGREE
    k_yy = (y @ y.T / d + 1) ** KID_DEGREE
    k_xy = (x @ y.T / d + 1) ** KID_DEGREE
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int = 100,
                              subset_size: int = 1000, seed: int = KID_SEED) -> KidResult:
    """KID: the unbiased polynomial-kernel MMD^2 averaged over random subsets (without replacement).

    Subsets make the cost linear in the number of images; the size is clamped to the smaller side,
    as clean-fid does (torch-fidelity refuses instead). A fixed seed makes the value reproducible.
    """
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise AdvsegError("KID needs at least 2 images per side")
    rng = np.random.default_rng(seed)
    values = [polynomial_mmd2(real[rng.choice(len(real), size, replace=False)],
                              fake[rng.choice(len(fake), size, replace=False)]) for _ in range(subsets)]
    return KidResult(float(np.mean(values)), float(np.std(values)), subsets, size)


# ----------------------------------------------------------------------------- statistics files
def write_statistics(path: Path, mu: np.ndarray, sigma: np.ndarray, features: np.ndarray | None = None,
                     meta: dict[str, Any] | None = None) -> None:
    """An ``.npz`` with ``mu`` and ``sigma`` (pytorch-fid's format), optionally features, atomically."""
    arrays: dict[str, np.ndarray] = {"mu": mu, "sigma": sigma}
    if features is not None:
        arrays["features"] = features
    if meta is not None:
        arrays["advseg_meta"] = np.array(json.dumps(meta, sort_keys=True))
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def read_statistics(path: Path, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(mu, sigma, features or None, advseg metadata) of a statistics file; no pickles are loaded."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            if not {"mu", "sigma"} <= names:
                raise AdvsegError(f"{label} {path}: not an FID statistics file (needs arrays mu and sigma; "
                                  f"has {', '.join(sorted(names)) or 'none'})")
            mu, sigma = archive["mu"][:], archive["sigma"][:]
            features = archive["features"][:] if "features" in names else None
            meta = json.loads(str(archive["advseg_meta"])) if "advseg_meta" in names else {}
    except AdvsegError:
        raise
    except Exception as exc:  # zip/format/pickle refusal: all mean "not a statistics file we can use"
        raise AdvsegError(f"{label} {path}: unreadable statistics file ({type(exc).__name__}: {exc})") from None
    dims = mu.shape[0] if mu.ndim == 1 else -1
    if mu.ndim != 1 or sigma.shape != (dims, dims):
        raise AdvsegError(f"{label} {path}: mu {mu.shape} and sigma {sigma.shape} do not form a Gaussian")
    if features is not None and (features.ndim != 2 or features.shape[1] != dims):
        raise AdvsegError(f"{label} {path}: features {features.shape} do not match mu {mu.shape}")
    return mu.astype(np.float64), sigma.astype(np.float64), features, meta


def statistics_file_side(path: Path, label: str) -> SideStatistics:
    """A side given as an ``.npz``; its run record (if any) tells how it was made."""
    mu, sigma, features, _meta = read_statistics(path, label)
    record = read_record(record_path_for(path))
    images = len(features) if features is not None else (record or {}).get("counts", {}).get("done")
    return SideStatistics(label, path, "stats", mu, sigma, features, images, source="file", record=record)


# ----------------------------------------------------------------------------- the REAL-side cache
def folder_content_digest(folder: Path, relatives: list[Path]) -> str:
    """sha256 over every image's relative path and content sha256: renames and edits both count."""
    paths = [folder / relative for relative in relatives]
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(sha256_file, paths))  # hashlib releases the GIL: threads help
    total = hashlib.sha256()
    for relative, digest in zip(relatives, digests):
        total.update(f"{relative.as_posix()}\0{digest}\n".encode("utf-8"))
    return total.hexdigest()


def statistics_cache_key(content: str, config: FidConfig, weights: ResolvedWeights, device: torch.device) -> str:
    """Content + everything that decides the features. Batch size and worker count are left out:
    they change nothing but the order of float roundings. The device type is in: CUDA convolutions
    (TF32 by default on recent GPUs) give other features than the CPU."""
    versions = tool_versions()
    settings = {"schema": STATS_CACHE_SCHEMA, "content": content, "dims": config.dims, "decode": config.decode,
                "weights_sha256": weights.sha256, "device_type": device.type,
                **{name: versions[name] for name in ("pytorch_fid", "torch", "torchvision", "numpy")}}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()


def statistics_cache_dir() -> Path:
    return advseg_home() / "fid-stats"


def _cached_side(path: Path, folder: Path, label: str, key: str) -> SideStatistics | None:
    """The cached statistics of ``folder`` under ``key``, or None (absent, unreadable or foreign)."""
    if not path.is_file():
        return None
    try:
        mu, sigma, features, meta = read_statistics(path, label)
    except AdvsegError:
        return None  # a damaged cache entry is recomputed and replaced, never an error
    if meta.get("key") != key or features is None:
        return None
    return SideStatistics(label, folder, "folder", mu, sigma, features, len(features),
                          failures=list(meta.get("failures", [])), source="cache", cache_file=path)


# ----------------------------------------------------------------------------- sides
@dataclasses.dataclass
class _Context:
    """What both sides share: the config, the device and (lazily) the weights and model."""

    config: FidConfig
    device: torch.device
    weights: ResolvedWeights | None = None

    def resolved_weights(self) -> ResolvedWeights:
        if self.weights is None:
            self.weights = resolve_inception_weights(self.config.weights)
        return self.weights


def _input_kind(path: Path, label: str) -> str:
    if path.is_dir():
        return "folder"
    if path.is_file() and path.suffix.lower() == ".npz":
        return "stats"
    if not path.exists():
        raise AdvsegError(f"{label} {path}: no such folder or file")
    raise AdvsegError(f"{label} {path}: not a folder of images nor a .npz statistics file")


def _listed_images(folder: Path, label: str) -> list[Path]:
    relatives = list_images(folder)
    if not relatives:
        raise AdvsegError(f"{label} {folder}: no image files found (looked recursively for .png, .jpg, "
                          ".bmp, .tif, .webp, ...)")
    if len(relatives) < 2:
        raise AdvsegError(f"{label} {folder}: only 1 image; FID needs at least 2 per side (a covariance)")
    return relatives


def _require_two(side: SideStatistics) -> SideStatistics:
    if side.images is not None and side.images < 2:
        failed = f" ({len(side.failures)} could not be decoded)" if side.failures else ""
        raise AdvsegError(f"{side.label} {side.path}: {side.images} decodable image(s){failed}; FID needs "
                          "at least 2 per side")
    return side


def _computed_side(folder: Path, relatives: list[Path], label: str, ctx: _Context) -> SideStatistics:
    weights = ctx.resolved_weights()
    model = load_inception(weights, ctx.config.dims, ctx.device)
    features, failures = folder_features(folder, relatives, model, ctx.config, ctx.device, label)
    if len(features) < 2:
        raise AdvsegError(f"{label} {folder}: {len(features)} decodable image(s) of {len(relatives)} "
                          f"({len(failures)} could not be decoded); FID needs at least 2 per side")
    mu, sigma = gaussian_of(features)
    return SideStatistics(label, folder, "folder", mu, sigma, features, len(features), failures)


def folder_side(folder: Path, label: str, ctx: _Context, use_cache: bool) -> SideStatistics:
    """A folder's statistics: from the cache when allowed and present, else computed (and cached)."""
    relatives = _listed_images(folder, label)
    if not use_cache:
        return _computed_side(folder, relatives, label, ctx)
    weights = ctx.resolved_weights()
    key = statistics_cache_key(folder_content_digest(folder, relatives), ctx.config, weights, ctx.device)
    cache_file = statistics_cache_dir() / f"{key}.npz"
    cached = _cached_side(cache_file, folder, label, key)
    if cached is not None:
        return _require_two(cached)
    side = _computed_side(folder, relatives, label, ctx)
    meta = {"key": key, "folder": str(folder.resolve()), "images": side.images, "failures": side.failures,
            "dims": ctx.config.dims, "decode": ctx.config.decode, "weights_sha256": weights.sha256,
            "batch_size": ctx.config.batch_size, "device": str(ctx.device), "versions": tool_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_statistics(cache_file, side.mu, side.sigma, side.features, meta)
    side.cache_file = cache_file
    return side


def _check_statistics_file(side: SideStatistics, config: FidConfig, folder_present: bool) -> None:
    """What a statistics file must offer, checked before any image goes through the network."""
    if config.kid and side.features is None:
        raise AdvsegError(_no_features_message(side))
    if folder_present and side.dims != config.dims:
        raise AdvsegError(f"{side.label} {side.path} holds {side.dims}-d statistics but the folder side "
                          f"would use --dims {config.dims}; pass --dims {side.dims}")


def _made_with(side: SideStatistics | None, ctx: _Context) -> tuple[str, str | None] | None:
    """(Inception weights sha256, decode) a side is or was computed with, when known."""
    if side is None:
        return ctx.resolved_weights().sha256, ctx.config.decode  # a folder we are about to compute
    options = (side.record or {}).get("options", {})
    return (options["weights_sha256"], options.get("decode")) if options.get("weights_sha256") else None


def _check_compatible(files: dict[str, SideStatistics], ctx: _Context, notes: list[str]) -> None:
    """Refuse to compare Gaussians of different feature spaces (dims, Inception weights)."""
    if len(files) == 2 and files["REAL"].dims != files["FAKE"].dims:
        raise AdvsegError(f"REAL has {files['REAL'].dims}-d statistics but FAKE has {files['FAKE'].dims}-d; "
                          "both sides must use the same Inception features")
    real, fake = _made_with(files.get("REAL"), ctx), _made_with(files.get("FAKE"), ctx)
    if real is None or fake is None:
        return
    if real[0] != fake[0]:
        raise IncompatibleInputError(
            f"REAL and FAKE were made with different Inception weights (sha256 {real[0][:12]}... vs "
            f"{fake[0][:12]}...); recompute the statistics file with the same --weights")
    if None not in (real[1], fake[1]) and real[1] != fake[1]:
        notes.append(f"REAL was decoded with --decode {real[1]} and FAKE with --decode {fake[1]}")


def _sample_size_notes(sides: tuple[SideStatistics, ...], dims: int, notes: list[str]) -> None:
    for side in sides:
        if side.images is not None and side.images < dims:
            notes.append(f"{side.label} has {side.images} images, fewer than the {dims} feature dims: its "
                         "covariance is singular and FID is strongly biased (the paper uses full test sets)")


# ----------------------------------------------------------------------------- the stage
def compute_fid(real: Path, fake: Path, config: FidConfig = FidConfig()) -> FidResult:
    """FID (and optionally KID) between REAL and FAKE, each a folder of images or a ``.npz``.

    Everything that can be refused cheaply (empty folders, unusable statistics files, mismatched
    dims or weights) is refused before the network runs. Only the REAL folder's statistics are
    cached (``config.cache``): it is the fixed test set that many runs are evaluated against.
    """
    config.validate()
    paths = {"REAL": Path(real), "FAKE": Path(fake)}
    kinds = {label: _input_kind(path, label) for label, path in paths.items()}
    files = {label: statistics_file_side(paths[label], label) for label in paths if kinds[label] == "stats"}
    folder_present = "folder" in kinds.values()
    for label in paths:
        if kinds[label] == "folder":
            _listed_images(paths[label], label)
        else:
            _check_statistics_file(files[label], config, folder_present)
    ctx = _Context(config, resolve_device(config.device) if folder_present else torch.device("cpu"))
    notes: list[str] = []
    _check_compatible(files, ctx, notes)
    real_side = files.get("REAL") or folder_side(paths["REAL"], "REAL", ctx, use_cache=config.cache)
    fake_side = files.get("FAKE") or folder_side(paths["FAKE"], "FAKE", ctx, use_cache=False)
    _sample_size_notes((real_side, fake_side), real_side.dims, notes)
    value = frechet_distance(real_side.mu, real_side.sigma, fake_side.mu, fake_side.sigma, notes)
    kid = None
    if config.kid:
        kid = kernel_inception_distance(real_side.features, fake_side.features, config.kid_subsets,
                                        config.kid_subset_size)
    return FidResult(value, kid, real_side, fake_side, config, ctx.weights, str(ctx.device), notes)


def _no_features_message(side: SideStatistics) -> str:
    return (f"--kid needs Inception features, but {side.label} {side.path} holds only mu and sigma "
            "(KID cannot be computed from them); pass the image folder, or a file written by "
            "`advseg fid FOLDER --save-stats OUT.npz --kid`")


def save_statistics(folder: Path, out: Path, config: FidConfig = FidConfig(), *,
                    overwrite: bool = False) -> tuple[SideStatistics, Path]:
    """Write ``out`` (pytorch-fid's ``.npz``: mu, sigma; plus features with ``config.kid``) and its
    run record ``<out>.run.json``; returns the statistics and the record's path.

    The folder counts as a REAL folder: its statistics come from (and go to) the cache.
    """
    config.validate()
    folder, out = Path(folder), Path(out)
    if _input_kind(folder, "FOLDER") != "folder":
        raise AdvsegError(f"--save-stats: {folder} is already a statistics file; pass a folder of images")
    if out.suffix.lower() != ".npz":
        raise AdvsegError(f"--save-stats {out}: the name must end in .npz (pytorch-fid recognises "
                          "statistics files by that suffix)")
    if out.exists() and not overwrite:
        raise AdvsegError(f"--save-stats {out}: file exists; choose another name or pass --overwrite")
    ctx = _Context(config, resolve_device(config.device))
    _listed_images(folder, "FOLDER")
    weights = ctx.resolved_weights()
    options = {**config.as_record(), "folder": str(folder.resolve()), "weights_sha256": weights.sha256}
    record = RunRecord(stage="fid-stats", options=options, weights=[weights.as_record()])
    record_file = record_path_for(out)
    record.write(record_file)
    try:
        side = folder_side(folder, "FOLDER", ctx, use_cache=config.cache)
        write_statistics(out, side.mu, side.sigma, side.features if config.kid else None)
    except BaseException as exc:
        record.finish("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        record.extra["error"] = str(exc)
        record.write(record_file)
        raise
    record.counts["done"] = side.images or 0
    for failure in side.failures:
        record.add_failure(failure["input"], failure["reason"])
    record.extra.update({"dims": side.dims, "source": side.source,
                         "cache_file": str(side.cache_file) if side.cache_file else None,
                         "versions": tool_versions(), "features_saved": config.kid})
    record.finish("complete")
    record.write(record_file)
    return side, record_file
