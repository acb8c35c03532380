"""kdcore: the FitNets hint + KD engine (pure PyTorch; never imports the service layers).

Entry points: :func:`kdcore.models.build_model`, :func:`kdcore.inspection.inspect_model`,
:func:`kdcore.train.train`, :func:`kdcore.pipeline.run`, :mod:`kdcore.losses`.
"""

__version__ = "0.1.0"
