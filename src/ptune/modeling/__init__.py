"""The model: the frozen base (``base``), prompt encoders (``encoders``), heads over the base (``heads``) and the
P-tuning model that splices the encoder's output into the base's input (``ptuning``)."""
