"""The ``shapes`` world in one place: its renderer, its trained Seg, and that Seg's training.

Why one package: the photos, their exact ground truth and the small network trained on them change
together (``WORLD_VERSION``, the class list, the weights' records), so they live together rather
than spread over ``datasets/`` and ``segmentation/``. The dependency runs one way only: this package
uses :mod:`advseg_cli.segmentation` (the class layout, the ``Segmenter`` interface, the registry) and
the segcache format, and neither of those imports it. The ``shapes`` backend reaches
:mod:`advseg_cli.world.seg` through the registry's table of module paths, like every built-in backend.

* :mod:`advseg_cli.world.render`: procedural photos and their ground truth (``advseg data prepare shapes``);
* :mod:`advseg_cli.world.seg`: the world's Seg networks, their weights files and the ``shapes`` backend;
* :mod:`advseg_cli.world.seg_training`: how those networks are trained and validated;
* :mod:`advseg_cli.world.steps`: the render and seg steps of ``advseg data prepare shapes``.

Importing this package imports nothing else (each module is imported where it is used).
"""
