"""Checkpoints for the server tests: untrained prompts over the tiny causal LM (what the server does with a
checkpoint does not depend on how well it was trained)."""

from pathlib import Path

from conftest import tiny_config


def make_checkpoint(model_dir, out: Path, template: str, task_type: str = "classification", verbalizer=None,
                    seed: int = 3, encoder: dict | None = None, **task) -> Path:
    from ptune.session import open_session
    from ptune.training.saving import save_inference

    task = {"type": task_type, "template": template, "max_new_tokens": 5, **task}
    if verbalizer:
        task["verbalizer"] = verbalizer
    session = open_session(tiny_config(model_dir, task=task, encoder=encoder or {}))
    save_inference(session, session.new_model(seed=seed), out)
    return out


def standard_checkpoints(model_dir, root: Path) -> dict[str, Path]:
    """Two classification tasks (one template each side of the text) and one generation task."""
    return {
        "complaints": make_checkpoint(model_dir, root / "complaints", "[P*3] Tweet text : {text} Label : [TARGET]",
                                      verbalizer={"complaint": "complaint", "no complaint": "no complaint"}),
        "sentiment": make_checkpoint(model_dir, root / "sentiment", "{text} [P*2] It was [TARGET]",
                                     verbalizer={"pos": "great", "neg": "terrible"}, seed=5),
        "reply": make_checkpoint(model_dir, root / "reply", "[P*2] {text} Label : [TARGET]", task_type="generation"),
    }


def classify_concurrently(client, jobs: list[tuple[str, list[str]]]) -> dict[int, list]:
    """POST every job (task name, texts) to ``/v1/classify`` at once, one thread each, as concurrent clients would;
    each job's predictions by its index. Fails the test if any request raised."""
    import threading

    answers, errors = {}, []

    def send(k):
        name, texts = jobs[k]
        try:
            r = client.post("/v1/classify", json={"task": name, "rows": [{"text": t} for t in texts]})
            answers[k] = r.json()["predictions"]
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and len(answers) == len(jobs), errors
    return answers
