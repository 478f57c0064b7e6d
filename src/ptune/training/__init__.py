"""Training: read and check the inputs (``prepare``), the loop (``trainer``), Accelerate (``distributed``), metrics on
disk (``logging``), self-training, and a whole run from config to checkpoint (``run``)."""
