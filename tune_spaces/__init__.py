"""Ray Tune search spaces, one module per model family: ``sdm``, ``bst`` and ``baselines``.

Each module has ``SPACES``: space name → a function returning a Ray Tune ``param_space``
(``baselines`` keys it by model first). Keys are ``TrainJob`` fields or model options; a key
joining names with commas is a joint dimension (``seqrec.tuning.joint``), which keeps
constraints such as "hidden divisible by heads" true by construction.
"""
