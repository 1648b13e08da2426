"""The applications built on the library: the command line (``cli``: ``python -m
overfeat_kernels``), feature extraction (``extract``, with robust image decoding in
``imageio``), training (``train``, with ``distributed``), the main job (``demo``: digits
detected by dense evaluation), the self-check (``selfcheck``) and CPU timing helpers
(``timing``). They need the ``apps`` extra (Pillow, scikit-learn, tqdm, safetensors), which
the library layers below do not import."""
