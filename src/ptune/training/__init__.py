"""Training: read and check the inputs (``prepare``), the loop (``trainer``: a ``Trainer`` and ``fit``), Accelerate
(``distributed``), the run's history on disk (``logging``), the inference checkpoint (``saving``), self-training,
and a whole run from config to checkpoint (``run``)."""
