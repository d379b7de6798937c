"""The GAN models of advseg: networks, losses, the image pool, public-checkpoint loaders, and the
CycleGAN / Pix2Pix models with the adversarial segmentation loss.

Pure modules: no command line, no file I/O except reading public generator checkpoints. The training
loop (optimizers, schedules, AMP, DDP, run folders) lives elsewhere and drives these.
"""

from advseg_cli.models.advseg import (
    ADVSEG_MODES,
    MODELS,
    SEG_GRAD_MODES,
    AdvSegModel,
    CycleGANAdvSeg,
    CycleGANConfig,
    CycleGANFakes,
    Pix2PixAdvSeg,
    Pix2PixConfig,
    Pix2PixFakes,
    build_model,
    model_config,
)
from advseg_cli.models.image_pool import ImagePool
from advseg_cli.models.losses import GAN_MODES, GANLoss, discriminator_loss, weighted_l1
from advseg_cli.models.networks import (
    GENERATOR_ARCHS,
    NORMS,
    GeneratorSpec,
    NLayerDiscriminator,
    ResnetGenerator,
    UnetGenerator,
    define_discriminator,
    define_generator,
    init_weights,
    patchgan_output_size,
    patchgan_receptive_field,
    set_requires_grad,
)
from advseg_cli.models.public_checkpoints import (
    LAYOUTS,
    PublicGeneratorInfo,
    generator_from_public,
    load_public_generator,
)

__all__ = [
    "ADVSEG_MODES",
    "GAN_MODES",
    "GENERATOR_ARCHS",
    "LAYOUTS",
    "MODELS",
    "NORMS",
    "SEG_GRAD_MODES",
    "AdvSegModel",
    "CycleGANAdvSeg",
    "CycleGANConfig",
    "CycleGANFakes",
    "GANLoss",
    "GeneratorSpec",
    "ImagePool",
    "NLayerDiscriminator",
    "Pix2PixAdvSeg",
    "Pix2PixConfig",
    "Pix2PixFakes",
    "PublicGeneratorInfo",
    "ResnetGenerator",
    "UnetGenerator",
    "build_model",
    "define_discriminator",
    "define_generator",
    "discriminator_loss",
    "generator_from_public",
    "init_weights",
    "load_public_generator",
    "model_config",
    "patchgan_output_size",
    "patchgan_receptive_field",
    "set_requires_grad",
    "weighted_l1",
]
