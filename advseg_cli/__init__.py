"""advseg: sketch colorization with an adversarial segmentation loss (Hicsonmez et al., ICIP 2021).

The package is a set of independent stages that meet only in files on disk; each stage is one typed
function (``advseg_cli.edges.extract_edges`` ...) that the ``advseg`` command calls.
"""

__version__ = "0.1.0"
