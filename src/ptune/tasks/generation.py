"""Generation: loss on the target text (and EOS); prediction by greedy ``generate`` with the KV cache."""

from __future__ import annotations

from .base import Task, sorted_batches


class GenerationTask(Task):
    """Rows whose target (``task.label_column``) is free text: trained on the text and EOS after the input,
    predicted by greedy decoding (``task.max_new_tokens``), scored by exact match.

    Args:
        cfg (`TaskConfig`), renderer (`Renderer`): see ``Task``.

    Example:
        >>> task = build_task(cfg.task, renderer, None)  # cfg.task.type == "generation"
        >>> task.predict(model, [{"text": "the capital of France is"}], 8, "cpu")[0]["prediction"]
    """

    def _target(self, text: str) -> list[int]:
        eos = self.renderer.tokenizer.eos_token_id
        return self.renderer.target_ids(text) + ([eos] if eos is not None else [])

    def train_examples(self, table):
        return [self.renderer.encode(row, self._target(row[self.label_column])) for row in table.rows], 0

    def predict(self, model, rows, batch_size, device, progress=None):
        tok = self.renderer.tokenizer
        encoded = [self.renderer.encode(row) for row in rows]
        texts: list[str] = [""] * len(rows)
        for idx, chunk in sorted_batches(encoded, batch_size):
            out = model.generate(self.batch(chunk, device), self.cfg.max_new_tokens, tok.eos_token_id,
                                 tok.pad_token_id)
            for i, seq in zip(idx, out.tolist()):
                texts[i] = tok.decode(seq, skip_special_tokens=True).strip()
            if progress:
                progress(len(chunk))
        return [{"prediction": t} for t in texts]

    def metrics(self, rows, predictions):
        gold = [r[self.label_column].strip() for r in rows]
        pred = [p["prediction"] for p in predictions]
        return {"exact_match": sum(g == p for g, p in zip(gold, pred)) / max(len(gold), 1), "n": len(gold)}
