"""The paper's experiments, one command each: ``ptune bench lama`` (LAMA knowledge probing, manual prompt vs
P-tuning, P@1) and ``ptune bench fewshot`` (few-shot classification: zero-shot manual prompt vs P-tuning with LSTM
and MLP encoders vs plain prompt tuning, several seeds). Data are read from a path argument, never copied.
The commands are defined in ``ptune.cli``."""
