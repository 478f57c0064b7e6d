import torch

from ptune.config import EncoderConfig
from ptune.modeling.encoders import build_encoder


def count(m):
    return sum(p.numel() for p in m.parameters())


def test_shapes_and_parameter_counts():
    n, d, h = 5, 32, 16
    emb = build_encoder(EncoderConfig(type="embedding"), n, d)
    assert emb().shape == (n, d) and count(emb) == n * d
    mlp = build_encoder(EncoderConfig(type="mlp", hidden_size=h, num_layers=3), n, d)
    assert mlp().shape == (n, d)
    assert count(mlp) == n * d + (d * h + h) + 2 * (h * h + h) + (h * d + d)  # depth honoured
    lstm = build_encoder(EncoderConfig(type="lstm", hidden_size=h, num_layers=2), n, d)
    assert lstm().shape == (n, d)
    lstm_params = 2 * (4 * h * (d + h) + 8 * h) + 2 * (4 * h * (2 * h + h) + 8 * h)
    head = (2 * h * 2 * h + 2 * h) + (2 * h * d + d)
    assert count(lstm) == n * d + lstm_params + head


def test_init_table_is_used():
    init = torch.arange(12.0).view(3, 4)
    enc = build_encoder(EncoderConfig(type="embedding"), 3, 4, init)
    assert torch.equal(enc(), init)
