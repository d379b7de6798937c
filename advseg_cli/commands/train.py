"""``advseg train``: parse and validate options, build the TrainConfig, print, call the loop."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import click

from advseg_cli.models.advseg import ADVSEG_MODES, MODELS, SEG_GRAD_MODES
from advseg_cli.models.seg_variants import SEG_REAL_MODES
from advseg_cli.models.networks import GENERATOR_ARCHS, NORMS
from advseg_cli.models.perceptual import PERCEPTUAL_LAYERS

# CUT's numeric options are plain click types: the model config refuses a bad value in one line naming the option.
# Options that configure the model; passed on only when given, so each model keeps its own
# defaults (lambda_seg 10 for CycleGAN and 100 for Pix2Pix, instance vs batch norm, ...).
MODEL_OPTIONS = ("arch", "ngf", "ndf", "n_layers_d", "norm", "dropout", "gan_mode", "advseg", "lambda_seg",
                 "seg_grad", "pool_size", "lambda_a", "lambda_b", "lambda_identity", "cycle_noise", "cycle_binarize",
                 "lambda_l1", "lambda_tv", "lambda_feat", "perceptual_layer", "lambda_gan", "lambda_nce", "nce_idt",
                 "nce_layers", "num_patches", "nce_t", "netf_nc", "flip_equivariance", "seg_real", "seg_augment",
                 "seg_warmup", "seg_balance", "seg_features", "seg_consistency")


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


@click.command()
@click.argument("data", type=click.Path(path_type=Path, file_okay=False), required=False)
@click.option("--name", required=True, help="Run name: the run folder is RUNS_DIR/NAME.")
@click.option("--runs-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("runs"), show_default=True,
              help="Folder that holds the run folders.")
@click.option("--model", type=click.Choice(list(MODELS)), default="cyclegan", show_default=True,
              help="cyclegan, cut, fastcut: unpaired trainA/trainB; pix2pix, autopainter: pairs with the same "
                   "relative path.")
@click.option("--sketches", type=click.Path(path_type=Path, file_okay=False), show_default="DATA/trainA",
              help="Sketch folder.")
@click.option("--photos", type=click.Path(path_type=Path, file_okay=False), show_default="DATA/trainB",
              help="Photo folder.")
@click.option("--advseg", type=click.Choice(ADVSEG_MODES), show_default="none",
              help="Segmentation discriminators: none, multi (D_M), binary, both.")
@click.option("--lambda-seg", type=click.FloatRange(min=0), show_default="10 CycleGAN, 100 Pix2Pix / AutoPainter",
              help="Weight of the segmentation GAN terms.")
@click.option("--seg-grad", type=click.Choice(SEG_GRAD_MODES),
              show_default="soft", help="soft: differentiable maps of generated photos (the paper's loss); compat: the public code's hard maps, no gradient; straight: hard maps forward, soft gradient backward.")
@click.option("--seg-real", type=click.Choice(SEG_REAL_MODES), show_default="hard",
              help="Real photos' maps: hard (one-hot of the cached labels, the paper's) or soft (Seg's probabilities "
                   "of the photo, made while training, so D_M / D_Bin compare soft maps with soft maps).")
@click.option("--seg-augment", metavar="POLICY", show_default="none",
              help="DiffAugment of the segmentation discriminators' inputs, the same draw for real and generated: "
                   "a comma-separated list of translation, cutout, color (color: Pix2Pix / AutoPainter only).")
@click.option("--seg-warmup", type=click.IntRange(min=0), metavar="N", show_default="0",
              help="Ramp the segmentation terms' weight from 0 over the first N steps.")
@click.option("--seg-balance", type=click.FloatRange(min=0), metavar="F", show_default="0: off",
              help="Weight the segmentation terms each step so their gradient on G's last layer is F times the "
                   "image GAN term's (replaces --lambda-seg; logged as weight/seg).")
@click.option("--seg-features", type=click.IntRange(min=0), metavar="C", show_default="0: off",
              help="D_M judges Seg's last feature map (through a fixed random projection to C channels, as "
                   "Projected GAN) of real and generated photos instead of their class maps; shapes and "
                   "mask2former backends.")
@click.option("--seg-consistency", type=click.FloatRange(min=0), metavar="W", show_default="0: off",
              help="Pix2Pix / AutoPainter: add W x cross-entropy of Seg's map of G(A) against the real photo's "
                   "labels (non-adversarial; needs --segcache).")
@click.option("--segcache", type=click.Path(path_type=Path, dir_okay=False),
              show_default="DATA/segmaps.h5 when it exists", help="Label maps of the photos (advseg segcache).")
@click.option("--segcache-missing", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="What to do with photos that have no fresh map.")
@click.option("--seg-backend", show_default="the segcache's", help="Segmentation backend for generated photos.")
@click.option("--seg-weights", type=click.Path(path_type=Path),
              show_default="those the segcache was made with, if still there", help="Weights of that backend (file or folder).")
@click.option("--arch", type=click.Choice(GENERATOR_ARCHS), show_default="resnet_9blocks; unet_256 AutoPainter",
              help="Generator.")
@click.option("--ngf", type=click.IntRange(min=1), show_default="64; 48 AutoPainter", help="Generator width.")
@click.option("--ndf", type=click.IntRange(min=1), show_default="64; 48 AutoPainter", help="Discriminator width.")
@click.option("--n-layers-d", type=click.IntRange(min=1), show_default="3: 70x70 patches", help="PatchGAN layers.")
@click.option("--norm", type=click.Choice(NORMS), show_default="instance CycleGAN, batch Pix2Pix / AutoPainter",
              help="Normalisation.")
@click.option("--dropout/--no-dropout", default=None, show_default="off CycleGAN, on Pix2Pix",
              help="Dropout in the generator.")
@click.option("--gan-mode", type=click.Choice(["lsgan", "vanilla"]), show_default="lsgan CycleGAN, vanilla Pix2Pix",
              help="GAN loss.")
@click.option("--pool-size", type=click.IntRange(min=0), show_default="50 CycleGAN, 0 Pix2Pix", help="Image pool size.")
@click.option("--lambda-a", type=click.FloatRange(min=0), show_default="10", help="CycleGAN cycle loss A.")
@click.option("--lambda-b", type=click.FloatRange(min=0), show_default="10", help="CycleGAN cycle loss B.")
@click.option("--lambda-identity", type=click.FloatRange(min=0), show_default="0.5", help="CycleGAN identity loss.")
@click.option("--cycle-noise", type=click.FloatRange(min=0), metavar="SIGMA", show_default="0: off",
              help="CycleGAN: Gaussian noise (std, images in [-1, 1]) on G_B's sketch before G_A reconstructs the "
                   "photo from it, so G_A cannot learn a code hidden in G_B's sketches.")
@click.option("--cycle-binarize/--no-cycle-binarize", default=None, show_default="off",
              help="CycleGAN: G_A reconstructs the photo from G_B's sketch thresholded to black and white, as real "
                   "sketches are (straight-through gradient), so no grey level can carry a hidden code.")
@click.option("--lambda-l1", type=click.FloatRange(min=0), show_default="100 / 50",
              help="Pix2Pix / AutoPainter L1 loss.")
@click.option("--lambda-tv", type=click.FloatRange(min=0), show_default="1e-3",
              help="AutoPainter total variation loss.")
@click.option("--lambda-feat", type=click.FloatRange(min=0), show_default="5.8e-3; 0: off",
              help="AutoPainter VGG feature loss.")
@click.option("--perceptual-layer", type=click.Choice(list(PERCEPTUAL_LAYERS)),
              show_default="relu3_2", help="AutoPainter: the VGG16 activations the feature loss compares.")
@click.option("--perceptual-weights", type=click.Path(path_type=Path, dir_okay=False),
              show_default="ADVSEG_HOME or torch hub's cache", help="AutoPainter: torchvision's vgg16-397923af.pth.")
@click.option("--lambda-gan", type=float, show_default="1", help="CUT / FastCUT: weight of the GAN loss.")
@click.option("--lambda-nce", type=float, show_default="1 cut, 10 fastcut",
              help="CUT / FastCUT: weight of the PatchNCE loss; 0: off.")
@click.option("--nce-idt/--no-nce-idt", default=None, show_default="on cut, off fastcut",
              help="CUT / FastCUT: the identity PatchNCE term on photos.")
@click.option("--nce-layers", show_default="0,4,7,10,14",
              help="CUT / FastCUT: generator layers PatchNCE compares (pixels, the two downsampling convs, "
                   "residual blocks 1 and 5).")
@click.option("--num-patches", type=int, show_default="256", help="CUT / FastCUT: patches sampled per layer.")
@click.option("--nce-t", type=float, show_default="0.07", help="CUT / FastCUT: temperature of PatchNCE.")
@click.option("--netf-nc", type=int, show_default="256", help="CUT / FastCUT: width of the patch projection MLP.")
@click.option("--flip-equivariance/--no-flip-equivariance", default=None, show_default="off cut, on fastcut",
              help="CUT / FastCUT: random left-right flips of G's input, features flipped back.")
@click.option("--load-size", type=click.IntRange(min=1), default=286, show_default=True,
              help="Photos and sketches are resized to this square first (bicubic).")
@click.option("--crop-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Then randomly cropped to this square: the size the networks train at.")
@click.option("--no-flip", is_flag=True, help="No random horizontal flips.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Images per step (per process under torchrun).")
@click.option("--epochs", type=click.IntRange(min=0), show_default="100; cut 200, fastcut 150 (the CUT code's)",
              help="Epochs at the initial rate.")
@click.option("--epochs-decay", type=click.IntRange(min=0), show_default="100; cut 200, fastcut 50 (the CUT code's)",
              help="Epochs of linear decay.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-4, show_default=True,
              help="Adam learning rate of generators and discriminators.")
@click.option("--beta1", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Adam beta1 (beta2 is 0.999).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of initialisation, crops, flips, pools and dropout (same seed, same run).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="fp32, or bf16 / fp16 autocast (fp16 with a gradient scaler; CUDA).")
@click.option("--channels-last", is_flag=True, help="channels-last memory format (faster convolutions on GPUs).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the networks.")
@click.option("--workers", type=click.IntRange(min=0), default=_default_workers, show_default="min(4, CPUs)",
              help="DataLoader processes that decode and augment images.")
@click.option("--max-steps", type=click.IntRange(min=0), default=0, help="Stop after this many steps (0: all epochs).")
@click.option("--max-items", type=click.IntRange(min=0), default=0, help="Use at most this many samples per epoch.")
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True,
              help="Steps between rows of metrics.csv (and NaN checks).")
@click.option("--log-seg-grad-norm", is_flag=True,
              help="Log the gradient norm of every generator term on the photo generator (grad/G_<term>_norm, and "
                   "grad/G_seg_norm for the segmentation terms together) at each metric row; one extra backward per "
                   "term then (0 exactly for a term without gradient, e.g. --seg-grad compat).")
@click.option("--grad-norm-every", type=click.IntRange(min=0), default=0,
              help="Steps between the --log-seg-grad-norm measurements (default 0: at every metric row); each costs "
                   "a backward per term, and training is the same whatever the interval.")
@click.option("--sample-every", type=click.IntRange(min=1), default=500, show_default=True,
              help="Steps between sample grids in samples/.")
@click.option("--save-every", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Steps between saves of checkpoints/latest.pt.")
@click.option("--save-epoch-every", type=click.IntRange(min=1), default=5, show_default=True,
              help="Epochs between checkpoints/epoch_NNN.pt snapshots.")
@click.option("--resume", is_flag=True, help="Continue RUNS_DIR/NAME from its latest checkpoint (bit-exact).")
@click.option("--auto-resume", is_flag=True,
              help="Resume when RUNS_DIR/NAME already has a checkpoint, else start it (for scripts and make).")
@click.option("--init-from", type=click.Path(path_type=Path, dir_okay=False),
              help="Start from generator weights (an advseg checkpoint or a public-code *_net_G*.pth), at step 0.")
@click.option("--like", type=click.Path(path_type=Path),
              help="Start a new run with another run's options (its folder or config.json); the options given "
                   "here override them, e.g. --like runs/a --name b --lambda-seg 5.")
@click.option("--dry-run", is_flag=True, help="Print the resolved configuration as JSON and exit.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(data: Path | None, **options: Any) -> None:
    """Train CycleGAN, Pix2Pix, AutoPainter, CUT or FastCUT (+ AdvSegLoss) on sketches and photos.

    DATA is a folder with trainA/ (sketches) and trainB/ (photos), as in the CycleGAN code base;
    --sketches/--photos name the folders directly. With --resume, the run's own config.json supplies
    every option not given on this command line (so `advseg train --name NAME --resume` is enough).
    """
    from advseg_cli.errors import AdvsegError
    from advseg_cli.training.loop import train as run_training

    dry_run, like = options.pop("dry_run"), options.pop("like")
    given = _options_given_on_command_line(click.get_current_context()) - {"auto_resume", "like", "dry_run"}
    latest = Path(options["runs_dir"]) / options["name"] / "checkpoints" / "latest.pt"
    if options.pop("auto_resume") and latest.exists():
        options["resume"] = True
    if options["resume"]:
        if like is not None:
            raise AdvsegError("--like starts a new run from another run's options; --resume continues a run: pick one")
        config = _resumed_config(data, options, given)
    elif like is not None:
        config = _config_like(like, data, options, given)
    else:
        config = _new_config(data, options)
    if dry_run:
        click.echo(json.dumps(_resolved_configuration(config), indent=2))
        return
    summary = run_training(config)
    if summary.already_complete:
        click.echo(f"train: {summary.run_dir} is already complete ({summary.steps} steps, epoch {summary.epoch}); "
                   "to train further, resume with a larger --max-steps (within its epochs) or start a new --name "
                   f"with --like {summary.run_dir} and more --epochs")
        return
    losses = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in summary.last_losses.items()
                       if k.startswith("loss/") and k.endswith("total"))
    click.echo(f"train: {summary.steps} steps, epoch {summary.epoch} ({losses}) -> {summary.run_dir}")


def _resolved_configuration(config: Any) -> dict[str, Any]:
    """Every option of the run, and every field of its model with the model's own defaults filled in."""
    from advseg_cli.models.advseg import model_config

    resolved = dataclasses.asdict(model_config(config.model, **config.model_options))
    return {**config.to_json(), "model_config": resolved}


def _options_given_on_command_line(ctx: click.Context) -> set[str]:
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}


def _new_config(data: Path | None, options: dict[str, Any]) -> Any:
    from advseg_cli.errors import AdvsegError
    from advseg_cli.training.loop import TrainConfig

    sketches = options.pop("sketches") or (data / "trainA" if data else None)
    photos = options.pop("photos") or (data / "trainB" if data else None)
    if sketches is None or photos is None:
        raise AdvsegError("give DATA (with trainA/ and trainB/) or both --sketches and --photos")
    model_options = {key: options.pop(key) for key in MODEL_OPTIONS}
    model_options = {key: value for key, value in model_options.items() if value is not None}
    _fill_schedule_defaults(options)
    segcache = options.pop("segcache")
    if segcache is None and data is not None and (data / "segmaps.h5").exists() \
            and (model_options.get("advseg", "none") != "none" or model_options.get("seg_consistency", 0) > 0):
        segcache = data / "segmaps.h5"
    return TrainConfig(sketches=sketches, photos=photos, model_options=model_options, segcache=segcache,
                       flip=not options.pop("no_flip"), compile=options.pop("compile_"), **options).validate()


def _fill_schedule_defaults(options: dict[str, Any]) -> None:
    """--epochs / --epochs-decay not given: the model's public schedule (CUT and FastCUT have their own)."""
    epochs, decay = MODELS[options["model"]][1].default_schedule
    options["epochs"] = epochs if options["epochs"] is None else options["epochs"]
    options["epochs_decay"] = decay if options["epochs_decay"] is None else options["epochs_decay"]


_PATH_FIELDS = ("sketches", "photos", "runs_dir", "segcache", "seg_weights", "perceptual_weights", "init_from")
_RESUME_MAY_CHANGE = ("max_steps", "workers", "device", "quiet", "log_every", "log_seg_grad_norm", "grad_norm_every",
                      "sample_every", "save_every", "save_epoch_every", "compile_", "channels_last")


def _resumed_config(data: Path | None, options: dict[str, Any], given: set[str]) -> Any:
    """The stored run's options, with the ones that may change between sessions taken from this call.

    Options that define the training itself (model, data, schedule, seed, ...) cannot change on resume:
    giving a different value is refused instead of silently continuing another experiment.
    """
    from advseg_cli.errors import AdvsegError
    from advseg_cli.training.loop import TrainConfig

    stored_file = Path(options["runs_dir"]) / options["name"] / "config.json"
    if not stored_file.exists():
        raise AdvsegError(f"--resume: {stored_file} does not exist; start the run without --resume")
    values = _stored_values(stored_file, "--resume")
    changed = sorted(name for name in given - {"resume", "name", "runs_dir", "dry_run", *_RESUME_MAY_CHANGE}
                     if _differs(name, options, values, data))
    if changed:
        raise AdvsegError(f"--resume: {', '.join('--' + c.replace('_', '-') for c in changed)} differ from the "
                          f"run's config.json; resume without them or start a new --name")
    _override(values, options, given & set(_RESUME_MAY_CHANGE))
    values.update(resume=True, init_from=None)
    return TrainConfig(**values).validate()


def _stored_values(config_file: Path, option: str) -> dict[str, Any]:
    """A run's config.json as TrainConfig field values (paths as Paths)."""
    from advseg_cli.errors import AdvsegError
    from advseg_cli.training.loop import TrainConfig

    if not config_file.is_file():
        raise AdvsegError(f"{option}: {config_file} does not exist; pass a run folder of `advseg train`")
    try:
        stored = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise AdvsegError(f"{option}: {config_file} is not readable JSON ({exc})") from None
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: (Path(v) if k in _PATH_FIELDS and v is not None else v) for k, v in stored.items() if k in fields}


def _config_like(like: Path, data: Path | None, options: dict[str, Any], given: set[str]) -> Any:
    """Another run's options, overridden by the ones given on this command line: a new run at step 0."""
    from advseg_cli.training.loop import TrainConfig

    values = _stored_values(like / "config.json" if like.is_dir() else like, "--like")
    if data is not None:
        values["sketches"], values["photos"] = data / "trainA", data / "trainB"
        if (data / "segmaps.h5").exists() and "segcache" not in given:
            values["segcache"] = data / "segmaps.h5"
    _override(values, options, given - {"data"})
    values.update(name=options["name"], runs_dir=options["runs_dir"], resume=False,
                  init_from=options["init_from"] if "init_from" in given else None)
    return TrainConfig(**values).validate()


def _override(values: dict[str, Any], options: dict[str, Any], names: set[str]) -> None:
    """Put this command line's values of ``names`` (click parameter names) into stored TrainConfig values."""
    values["model_options"] = dict(values.get("model_options") or {})
    for name in names:
        if name in MODEL_OPTIONS:
            values["model_options"][name] = options[name]
        elif name == "no_flip":
            values["flip"] = not options[name]
        else:
            values["compile" if name == "compile_" else name] = options[name]


def _differs(name: str, options: dict[str, Any], stored: dict[str, Any], data: Path | None) -> bool:
    if name == "data":
        return data is not None and (Path(stored["sketches"]) != data / "trainA" or Path(stored["photos"]) != data / "trainB")
    if name in MODEL_OPTIONS:
        return stored["model_options"].get(name) != options[name]
    if name == "no_flip":
        return stored["flip"] == options[name]
    value = options[name]
    return (Path(value) if isinstance(value, Path) else value) != stored.get(name)
