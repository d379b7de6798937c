"""HED edge detection and sketch extraction for advseg.

* :class:`HED` - the network (PyTorch), RGB 0..255 in, edge probability out;
* :func:`load_hed_weights` and friends - the published weight formats;
* :func:`pix2pix_postprocess` / :func:`soft_sketch` - probability map -> sketch;
* :func:`xdog` / :func:`canny` - classical, weight-free alternatives.

This package must not import click or advseg_cli: it is a library, the CLI wraps it.
The original Caffe model (``.caffemodel``) is read by :mod:`hed.caffe`, without Caffe or protobuf.
"""

from .classical import canny, xdog
from .network import HED, MEAN_BGR, predict_edges
from .postprocess import conv_tri, edges_nms, edge_orientation, pix2pix_postprocess, soft_sketch
from .weights import (
    HEDWeightsError,
    load_hed_weights,
    save_keras_h5,
    state_dict_from_caffemodel,
    state_dict_from_keras_h5,
    state_dict_from_pytorch_hed,
    to_pytorch_hed,
)

__all__ = [
    "HED",
    "MEAN_BGR",
    "HEDWeightsError",
    "canny",
    "conv_tri",
    "edge_orientation",
    "edges_nms",
    "load_hed_weights",
    "pix2pix_postprocess",
    "predict_edges",
    "save_keras_h5",
    "soft_sketch",
    "state_dict_from_caffemodel",
    "state_dict_from_keras_h5",
    "state_dict_from_pytorch_hed",
    "to_pytorch_hed",
    "xdog",
]
