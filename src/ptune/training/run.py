"""``train(cfg, out_dir)``: a whole training run, from the config to the checkpoint directory and a summary."""

from __future__ import annotations

from pathlib import Path

from .. import checkpoint
from ..config import Config
from ..evaluator import evaluate
from ..session import check_inputs, read_split, report_truncated
from .distributed import check_batch_split, distributed_state, on_main
from .prepare import prepare
from .trainer import fit


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, show_progress: bool = True) -> dict:
    """A whole training run: read and check the config's data, train, write the checkpoint directory, and return a
    summary.

    Every input is read and checked before a model is loaded or a file written; dev rows come from ``data.dev`` or
    ``data.dev_fraction`` of the training rows; under ``accelerate launch`` every process trains its shard and only
    the main process writes (see ``Trainer``).

    Args:
        cfg (Config): the run's configuration.
        out_dir (str | Path): the checkpoint folder; it must not hold a checkpoint yet, unless ``resume``.
        resume (bool): continue the run whose resumable state ``out_dir`` holds (after Ctrl-C or a crash).
        show_progress (bool): a progress bar (main process).

    Returns:
        dict: ``out`` (the folder), ``steps``, ``best_<metric>`` (None without dev), and the kept model's metrics on
        ``dev`` and ``test`` where those rows are given.

    Example:
        >>> from ptune import Config, train
        >>> summary = train(Config.from_yaml("examples/twitter_complaints_chosen.yaml"), "runs/complaints")
        >>> summary["dev"]["accuracy"]
    """
    out_dir = Path(out_dir)
    dist = distributed_state(cfg)  # None in a single process; else only the main process looks at --out
    if dist is not None:
        check_batch_split(cfg.train.batch_size, dist.num_processes)

    # a folder holding a checkpoint (unless resumed) or a model's or adapter's files is refused before any work
    on_main(dist, lambda: checkpoint.check_out_dir(out_dir, resume=resume, resumable=True))
    session, train_table, dev = prepare(cfg)
    test = None
    if cfg.data.test:

        test = read_split(cfg, "test")
        check_inputs(cfg, session.template, test, labelled=True)
        session.task.check(test)
    for table, what in ((dev, "dev rows"), (test, "test rows")):
        if table is not None and (dist is None or dist.is_main_process):
            report_truncated(session, table, what)
    # no mkdir here: the folder appears with the first checkpoint, so a run that fails on its data writes nothing
    model, prog = fit(session, train_table, dev, out_dir, resume=resume, show_progress=show_progress, held_out=test)

    def summarise() -> dict:
        summary = {"out": str(out_dir), "steps": prog.step, "best_" + cfg.metric: prog.best}
        if dev is not None:
            summary["dev"] = evaluate(model, session, dev)
        if test is not None:
            summary["test"] = evaluate(model, session, test)
        return summary

    return on_main(dist, summarise)  # evaluated once, on the main process; every process returns it
