"""Same prompt table, prefix template: ptune and PEFT's P-tuning give the same loss and logits."""

import pytest
import torch

from conftest import tiny_config
from ptune.data.render import collate
from ptune.session import open_session

peft = pytest.importorskip("peft")


def test_same_loss_and_logits_as_peft(tiny_causal_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    pcfg = peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16)
    pmodel = peft.get_peft_model(base, pcfg).eval()
    with torch.no_grad():
        table = pmodel.get_prompt_embedding_to_save(adapter_name="default")  # (4, 32), PEFT's encoder output

    cfg = tiny_config(tiny_causal_dir, task={"template": "[P*4] {text} [TARGET]"}, encoder={"type": "embedding"})
    s = open_session(cfg, label_values=["complaint", "no complaint"])
    model = s.new_model().eval()
    model.set_prompt_table(table)
    r = s.task.renderer
    rows = [r.encode({"text": "my order arrived late"}, r.target_ids("complaint")),
            r.encode({"text": "thanks"}, r.target_ids("no complaint"))]
    for enc in rows:  # one row at a time: PEFT would put pads between prompt and text
        batch = collate([enc], s.tokenizer.pad_token_id)
        ours_loss = model.loss(batch)
        ours_logits, _ = model.target_logits(batch)
        real = torch.tensor([[t for t, v in zip(enc.input_ids, enc.virtual_index) if v < 0]])
        labels = torch.tensor([[l for l, v in zip(enc.labels, enc.virtual_index) if v < 0]])
        with torch.no_grad():
            out = pmodel(input_ids=real, attention_mask=torch.ones_like(real), labels=labels)
        k = ours_logits.shape[1]
        assert torch.allclose(out.loss, ours_loss, atol=1e-5)
        assert torch.allclose(out.logits[:, -k - 1:-1], ours_logits, atol=1e-4)
