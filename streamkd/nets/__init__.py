"""Method networks: the models a particular method defines, kept out of its strategy file so
that the strategy reads like the paper's algorithm box. One module per family:
:mod:`streamkd.nets.suan` (SUAN and LightSUAN, the CTR models of ``lightsuan``) and
:mod:`streamkd.nets.sc_clip` (SC-CLIP's caption teacher, raster student and trajectory
predictor, for ``sc_clip``). The generic classifiers any strategy can train (backbones, heads,
:class:`~streamkd.models.Classifier`) stay in :mod:`streamkd.models`. Modules here build on the
core only (``streamkd.models``, ``streamkd.types``, ``streamkd.trajectory``, ...), never on
strategies, streams, the experiment drivers, the CLI or the daemon.
"""
