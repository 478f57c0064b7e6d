"""The Python API end to end, without a YAML file: build a config in Python, cross-validate it, train, load the
checkpoint, predict from a list of dicts and from a pandas DataFrame, evaluate, and export a prefix-prompt model to
PEFT.

Offline, on the embedded SmolLM2-135M-Instruct and the bundled customer-messages data (64 training messages, 35
test messages; complaint or not):

    python examples/python_api.py --out runs/python-api
    python examples/python_api.py --out runs/quick --epochs 1 --max-steps 2

Writes, under the output folder: ``config.yaml`` (the same recipe for ``ptune train --config``), ``model/`` (the
checkpoint), ``prefix-model/`` and ``prefix-peft/`` (a PEFT adapter). pandas is optional: without it the DataFrame
step is skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ptune
from ptune.config import EMBEDDED_MODEL
from ptune.demo import DATA

TRAIN = str(DATA / "customer_messages_train.csv")
TEST = str(DATA / "customer_messages_test.csv")
NEW_MESSAGES = [{"message": "The parcel never arrived and support ignores my emails."},
                {"message": "What are your opening hours on Saturday?"}]


def build_config(model: str, epochs: int, max_steps: int = 0) -> ptune.Config:
    """The demo's recipe: virtual tokens between the message and the question, labels read by a linear classifier
    over the middle block's pooled states."""
    return ptune.Config(
        model=ptune.ModelConfig(name_or_path=model),
        task=ptune.TaskConfig(template="Message : {message} [P*8] Is this a complaint ? Answer : [TARGET]",
                              verbalizer={"complaint": "yes", "no complaint": "no"}, head="linear"),
        encoder=ptune.EncoderConfig(type="lstm", hidden_size=128),
        data=ptune.DataConfig(train=TRAIN, test=TEST, dev_fraction=0.2),
        train=ptune.TrainConfig(lr=3e-3, batch_size=8, epochs=epochs, max_steps=max_steps, max_length=96, seed=7,
                                warmup_ratio=0.1),
    )


def main(model: str = EMBEDDED_MODEL, out_dir: str | Path = "runs/python-api", epochs: int = 8, folds: int = 2,
         max_steps: int = 0, show_progress: bool = True) -> dict:
    """Run every step; return what each gave.

    Args:
        model (`str`): the base model (``model.name_or_path``).
        out_dir (`str` or `Path`): a new folder for the outputs.
        epochs (`int`): training epochs, for cross-validation and training alike.
        folds (`int`): cross-validation folds.
        max_steps (`int`): stop every training after this many steps (0: all its epochs), for a quick check.
        show_progress (`bool`): progress bars and per-epoch lines.

    Returns:
        `dict`: ``cv`` (the cross-validation summary), ``train`` (the training summary), ``predictions`` (for
        ``NEW_MESSAGES``), ``frame`` (the test DataFrame with predictions; None without pandas), ``test`` (metrics
        from ``evaluate``), ``peft`` (the export summary) and ``out`` (the output folder).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = build_config(model, epochs, max_steps)
    cfg.to_yaml(out / "config.yaml")

    cv = ptune.cross_validate(cfg, folds=folds, show_progress=show_progress)
    print(f"cross-validation ({folds} folds): accuracy {cv['accuracy']['mean']:.3f} "
          f"(std {cv['accuracy']['std']:.3f}), macro-F1 {cv['macro_f1']['mean']:.3f}")

    summary = ptune.train(cfg, out / "model", show_progress=show_progress)
    predictor = ptune.load(out / "model")

    predictions = predictor.predict(NEW_MESSAGES)
    for row, p in zip(NEW_MESSAGES, predictions):
        print(f"  {p['prediction']:<13} {row['message']}")

    frame = None
    try:
        import pandas
    except ImportError:  # pandas is optional: a list of dicts does the same
        pandas = None
    if pandas is not None:
        test = pandas.read_csv(TEST)
        frame = predictor.predict(test.drop(columns=["label"]))  # the same rows, with prediction and scores
        test_metrics = predictor.evaluate(test)
    else:
        test_metrics = predictor.evaluate_file(TEST, show_progress=False)
    print(f"test: accuracy {test_metrics['accuracy']:.3f}, macro-F1 {test_metrics['macro_f1']:.3f}")

    # PEFT prepends virtual tokens and reads label words: export needs a prefix template and task.head words
    # (this model is for the export only, so its test rows are not scored)
    prefix_cfg = cfg.replace({"task.template": "[P*8] Message : {message} Is this a complaint ? Answer : [TARGET]",
                              "task.head": "words", "data.test": None})
    ptune.train(prefix_cfg, out / "prefix-model", show_progress=show_progress)
    peft = ptune.export_peft(out / "prefix-model", out / "prefix-peft")
    print(f"PEFT adapter: {peft['out']} ({peft['num_virtual_tokens']} virtual tokens; input: {peft['input_format']!r})")
    return {"cv": cv, "train": summary, "predictions": predictions, "frame": frame, "test": test_metrics,
            "peft": peft, "out": str(out)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="base model (a local folder, or the embedded one)")
    parser.add_argument("--out", default="runs/python-api", help="a new output folder")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=0, help="stop every training after this many steps")
    args = parser.parse_args()
    main(args.model, args.out, args.epochs, args.folds, args.max_steps)
