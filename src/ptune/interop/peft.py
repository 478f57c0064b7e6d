"""PEFT interop: export a ptune checkpoint as a PEFT prompt-learning adapter, and import one as a ptune checkpoint.

PEFT saves every prompt-learning adapter (prompt tuning, P-tuning) as ``adapter_config.json`` plus
``adapter_model.safetensors`` holding one tensor, ``prompt_embeddings`` (n_virtual, hidden): the prompt table that
inference prepends to the input embeddings. For P-tuning that is the encoder's *output*; the encoder itself (LSTM or
MLP) is not saved, and a P_TUNING adapter loaded with ``is_trainable=True`` would rebuild a fresh random encoder and
feed the saved table *through* it. So the export is written as ``PROMPT_TUNING``: PEFT uses the table unchanged at
inference (same predictions as ptune) and, if training continues in PEFT, it trains that table directly, which is
the faithful continuation of the table ptune computed. Both P_TUNING and PROMPT_TUNING adapters import the same way
(the table), into a ptune ``embedding`` encoder initialised from it.

Only prefix templates can be exported (PEFT always puts the virtual tokens first); the anchor text after the prefix
is part of the input a PEFT user must feed, so the export folder documents it (``README.md``, ``ptune_export.json``).

A deep prompt (``encoder.deep_tokens``: keys and values at every layer) is PEFT's ``PREFIX_TUNING``: its flat table
is the adapter's ``prompt_embeddings``, and a prefix-tuning adapter imports as a deep prompt (``peft_prefix`` holds
the layout PEFT reads and the checks). One adapter holds one kind of prompt, so a template with ``[P]`` tokens
beside a deep prompt is refused.

Reading is safe: JSON and safetensors only, never ``torch.load``/pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import checkpoint
from ..data.labels import LabelSpace
from ..errors import CheckpointError, PtuneError
from ..modeling.components import build_head, build_prompt
from ..training.trainer import Progress
from . import peft_prefix

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
EXPORT_META = "ptune_export.json"
EXPORT_README = "README.md"
EXPORT_FORMAT = "ptune-peft-export"
MAX_JSON_BYTES = 1 << 20
PROMPT_TYPES = ("P_TUNING", "PROMPT_TUNING")


# ---------------------------------------------------------------------------------------------------------------
# shared checks


def _base_and_tokenizer(model_cfg):
    """(identity, kind, HF config, tokenizer) of a base model, without loading its weights."""
    from transformers import AutoTokenizer

    from ..modeling.base import describe_base, detect_kind

    folder, load_kwargs, identity, hf_config = describe_base(model_cfg)
    kind = detect_kind(hf_config) if model_cfg.kind == "auto" else model_cfg.kind
    tokenizer = AutoTokenizer.from_pretrained(folder, **load_kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return folder, identity, kind, hf_config, tokenizer


def _check_compatible(template, kind: str, tokenizer, where: str, deep_tokens: int = 0) -> None:
    """Refuse what PEFT's prompt learning cannot reproduce exactly, saying why (the prompt's own answer first:
    ``Prompt.peft_problem``). A deep prompt sits before the special tokens in ptune and in PEFT alike, so only
    input virtual tokens need a tokenizer that adds none."""
    problem = build_prompt(template, kind, deep_tokens=deep_tokens).peft_problem()
    if problem:
        raise PtuneError(f"{where}: {problem}")
    if tokenizer is None or deep_tokens:
        return
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if list(with_special) != list(plain):
        raise PtuneError(f"{where}: the tokenizer adds special tokens ({with_special} vs {plain} for 'a'); ptune puts "
                         "them before the virtual tokens and PEFT after, so predictions would differ")


def input_format(template, tokenizer, max_length: int = 256) -> tuple[str, str]:
    """The text a PEFT user feeds after the prompt (fields as ``{name}``, the target left out) and the whitespace
    that goes before the target word. Rendered by ptune's own renderer, so it is exactly what ptune tokenizes."""
    from ..data.render import Renderer

    renderer = Renderer(template, tokenizer, "causal", max_length)
    pieces, target_space = renderer.pieces({f: "{" + f + "}" for f in template.fields})
    text = "".join(p for kind, p in pieces if kind in ("text", "field"))
    return text, target_space


# ---------------------------------------------------------------------------------------------------------------
# export


def export_peft(checkpoint_dir: str | Path, out_dir: str | Path) -> dict:
    """Write ``out_dir`` as a PEFT adapter equivalent to the checkpoint; return a summary. Input virtual tokens
    become a ``PROMPT_TUNING`` adapter, a deep prompt (``encoder.deep_tokens``) a ``PREFIX_TUNING`` one."""
    from ..config import config_from_dict
    from ..template import parse_template

    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    meta, _, prompts = checkpoint.load_model(checkpoint_dir)
    check_export_dir(out_dir)  # before the base model's tokenizer loads
    cfg = config_from_dict(meta["config"])
    template = parse_template(meta["template"])
    deep_tokens = cfg.encoder.deep_tokens
    where = f"export {checkpoint_dir}"
    if not build_head(cfg.task.head).peft_export:
        raise PtuneError(f"export {checkpoint_dir}: this model reads labels with a linear classifier (task.head "
                         f"{cfg.task.head}); a PEFT CAUSAL_LM prompt adapter holds the prompt only and would answer "
                         "with label words instead")
    if not template.is_prefix or (deep_tokens and template.n_virtual):  # before loading anything
        _check_compatible(template, "causal", None, where, deep_tokens)
    folder, identity, kind, hf_config, tokenizer = _base_and_tokenizer(cfg.model)
    checkpoint.check_identity(meta["base"], identity, f"checkpoint {checkpoint_dir}")
    _check_compatible(template, kind, tokenizer, where, deep_tokens)
    text, target_space = input_format(template, tokenizer, cfg.train.max_length)
    if deep_tokens:
        adapter_config, table, layout = _prefix_adapter(checkpoint_dir, hf_config, str(folder), cfg, where)
    else:
        adapter_config, table, layout = _prompt_adapter(prompts, hf_config, str(folder), cfg), prompts, None
    export_meta = {
        "format": EXPORT_FORMAT, "version": 1,
        "template": template.source,
        "input_format": text,
        "add_special_tokens": bool(deep_tokens),  # a deep prompt comes before them, in ptune as in PEFT
        "fields": template.fields,
        "field_columns": dict(cfg.data.columns),
        "target_prefix": target_space,
        "task": cfg.task.type,
        "labels": meta.get("labels"),
        "score": cfg.task.score,
        "label_offsets": meta.get("label_offsets"),  # task.calibrate: prior; PEFT has no place for them
        "base": meta["base"],
        "config": meta["config"],
        "source_checkpoint": str(checkpoint_dir),
    }
    if layout is not None:
        export_meta["deep"] = layout
    _write_adapter(out_dir, export_meta, adapter_config, table)
    summary = {"out": str(out_dir), "peft_type": adapter_config["peft_type"],
               "num_virtual_tokens": adapter_config["num_virtual_tokens"], "token_dim": adapter_config["token_dim"],
               "input_format": text}
    return summary | ({"num_layers": adapter_config["num_layers"]} if layout is not None else {})


def _write_adapter(out_dir: Path, export_meta: dict, adapter_config: dict, table: torch.Tensor) -> None:
    """The adapter's files, each whole or not at all, in an order that leaves no folder looking complete early."""
    from safetensors.torch import save as st_save

    out_dir.mkdir(parents=True, exist_ok=True)
    # ptune_export.json first: it marks the folder as an export, so a retry after a crash may replace the rest
    checkpoint.write_atomic(out_dir / EXPORT_META, json.dumps(export_meta, indent=2, ensure_ascii=False).encode())
    checkpoint.write_atomic(out_dir / ADAPTER_WEIGHTS, st_save({"prompt_embeddings": table.float().contiguous()}))
    checkpoint.write_atomic(out_dir / EXPORT_README, _readme(export_meta, adapter_config).encode())
    # the config last: a folder with it is a complete adapter
    checkpoint.write_atomic(out_dir / ADAPTER_CONFIG, json.dumps(adapter_config, indent=2).encode())


def _prompt_adapter(prompts: torch.Tensor, hf_config, base_path: str, cfg) -> dict:
    """``adapter_config.json`` of the ``PROMPT_TUNING`` adapter holding the input prompt table (n, d)."""
    text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    n, dim = prompts.shape
    return {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": int(n),
        "token_dim": int(dim),
        "num_transformer_submodules": 1,
        "num_attention_heads": getattr(text_config, "num_attention_heads", None),
        "num_layers": getattr(text_config, "num_hidden_layers", None),
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
        "inference_mode": True,
        "base_model_name_or_path": base_path,
        "revision": cfg.model.revision,
        "modules_to_save": None,
        "auto_mapping": None,
    }


def _prefix_adapter(checkpoint_dir: Path, hf_config, base_path: str, cfg, where: str):
    """(``adapter_config.json``, flat table, layout) of the ``PREFIX_TUNING`` adapter holding a checkpoint's deep
    prompt. The checkpoint is loaded as for prediction: its table and the base's real KV cache layout come from
    the same place ptune's own forward pass takes them."""
    from ..inference import Predictor

    model = Predictor.load(checkpoint_dir, device="cpu").model
    table, layout = model.deep_table(), model.deep.layout
    problem = peft_prefix.layout_problem(hf_config, layout.layers, layout.heads, layout.head_dim)
    if problem:
        raise PtuneError(f"{where}: {problem}")
    adapter = peft_prefix.prefix_adapter_config(table.shape[0], layout.layers, layout.heads, layout.head_dim,
                                                base_path, cfg.model.revision)
    return adapter, table.detach().cpu(), {"layers": layout.layers, "heads": layout.heads,
                                           "head_dim": layout.head_dim}


def _is_export(folder: Path) -> bool:
    """Whether ``folder`` holds an earlier ptune export (its ``ptune_export.json``), whose files may be replaced."""
    try:
        return _read_json(folder / EXPORT_META).get("format") == EXPORT_FORMAT
    except CheckpointError:
        return False


def check_export_dir(out_dir: Path) -> None:
    """Refuse an adapter folder whose files ptune did not write: a ptune checkpoint, a model's or another adapter's
    files, or a ``README.md`` or ``ptune_export.json`` of someone else's. An earlier export's folder is replaced.

    Args:
        out_dir (`Path`): the adapter folder ``export_peft`` is about to write.

    Returns:
        None; raises `PtuneError` naming the folder, the files found, and what to do.

    Example:
        >>> check_export_dir(Path("models/SmolLM2-135M"))  # doctest: +SKIP
        PtuneError: models/SmolLM2-135M holds config.json, model.safetensors: the files of a model or adapter, ...
    """
    if (out_dir / checkpoint.MANIFEST).exists() or checkpoint.has_state(out_dir):
        raise PtuneError(f"{out_dir} holds a ptune checkpoint; choose another --out for the PEFT adapter")
    if out_dir.is_dir() and not _is_export(out_dir):
        checkpoint.refuse_foreign(out_dir)
        taken = [name for name in (EXPORT_META, EXPORT_README) if (out_dir / name).exists()]
        if taken:
            raise PtuneError(f"{out_dir} holds {', '.join(taken)}, not from a ptune export; ptune will not overwrite "
                             "them: choose a new or empty folder for --out")
    elif out_dir.exists() and not out_dir.is_dir():
        raise PtuneError(f"{out_dir}: a file, not a folder; --out names the adapter folder to write")


def _readme(meta: dict, adapter: dict) -> str:
    labels = meta.get("labels") or {}
    label_lines = "".join(f"- `{l}`: {', '.join(repr(meta['target_prefix'] + w) for w in ws)}\n"
                          for l, ws in labels.items())
    label_section = f"\n## Labels (label: word(s) the model scores)\n\n{label_lines}" if label_lines else ""
    if meta.get("label_offsets"):
        offsets = ", ".join(f"`{l}`: {v:+.4f}" for l, v in meta["label_offsets"].items())
        label_section += (f"\nThe checkpoint was calibrated (`task.calibrate: prior`): add these offsets to each label's "
                          f"log-probability (normalised over the labels) before taking the best: {offsets}\n")
    if adapter["peft_type"] == peft_prefix.PREFIX_TYPE:
        what = (f"A `PREFIX_TUNING` adapter ({adapter['num_virtual_tokens']} positions of keys and values at each of "
                f"{adapter['num_layers']} layers, {adapter['num_attention_heads']} heads of width "
                f"{adapter['token_dim'] // adapter['num_attention_heads']}) holding the deep prompt of a ptune "
                "checkpoint (`prompt_embeddings` in `adapter_model.safetensors`, no projection). To generate, "
                "decode with the model's forward pass: with peft 0.21.2 and transformers 5.24, PEFT's `generate()` "
                "left the prefix out (it decoded as the bare base model).")
        feed = ("PEFT puts the deep prompt in the KV cache itself, so feed the template, with each `{field}` replaced "
                "by the row's value, with the tokenizer's special tokens (as ptune does; the deep prompt comes "
                "before them), and no position ids (PEFT's count from the prefix's length):")
    else:
        what = (f"A `PROMPT_TUNING` adapter ({adapter['num_virtual_tokens']} virtual tokens of width "
                f"{adapter['token_dim']}) holding the prompt table of a ptune checkpoint (`prompt_embeddings` in "
                "`adapter_model.safetensors`).")
        feed = ("PEFT prepends the virtual tokens itself, so feed the rest of the template, with each `{field}` "
                "replaced by the row's value, **without special tokens** (`add_special_tokens=False`):")
    return f"""# PEFT adapter exported by ptune

{what}

```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "THIS_FOLDER")   # base: {meta['base'].get('name_or_path')}
```

## Input format

ptune's template was `{meta['template']}`. {feed}

    {meta['input_format']}

The answer follows directly, preceded by {meta['target_prefix']!r}. ptune tokenizes the anchor text and each
field separately, so for byte-exact agreement tokenize the pieces apart (boundaries at the field starts); for
ordinary text the whole string tokenizes the same. Task type: `{meta['task']}`; scoring of label words:
`{meta['score']}` of their token log-probabilities.
{label_section}
`ptune_export.json` holds the same in machine-readable form (and the full ptune config, so that
`ptune import THIS_FOLDER --out DIR` restores the checkpoint).
"""


# ---------------------------------------------------------------------------------------------------------------
# import


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise CheckpointError(f"{path}: larger than {MAX_JSON_BYTES} bytes; not an adapter config")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def read_peft_adapter(peft_dir: str | Path) -> tuple[dict, torch.Tensor]:
    """(adapter config, table float32) of a PEFT adapter folder: P-tuning or prompt tuning, the prompt table (n, d);
    prefix tuning, the flat table of keys and values (n, L*2*token_dim) (``peft_prefix``)."""
    from safetensors import SafetensorError, safe_open

    peft_dir = Path(peft_dir)
    if not peft_dir.is_dir():
        raise CheckpointError(f"{peft_dir}: not a folder (expected a PEFT adapter folder)")
    config = _read_json(peft_dir / ADAPTER_CONFIG)
    ptype = str(config.get("peft_type", "")).upper()
    if ptype not in PROMPT_TYPES + (peft_prefix.PREFIX_TYPE,):
        raise CheckpointError(f"{peft_dir}: peft_type {config.get('peft_type')!r} cannot be imported (it is not a "
                              f"prompt-learning adapter); ptune imports {', '.join(PROMPT_TYPES)} and "
                              f"{peft_prefix.PREFIX_TYPE}")
    task_type = config.get("task_type")
    if task_type not in (None, "CAUSAL_LM"):
        raise CheckpointError(f"{peft_dir}: task_type {task_type!r}; ptune imports CAUSAL_LM adapters only")
    if config.get("num_transformer_submodules") not in (None, 1):
        raise CheckpointError(f"{peft_dir}: num_transformer_submodules {config['num_transformer_submodules']} "
                              "(an encoder-decoder adapter); ptune imports decoder-only adapters")
    weights = peft_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        if (peft_dir / "adapter_model.bin").is_file():
            raise CheckpointError(f"{peft_dir}: only adapter_model.bin (a pickle) is present; ptune never unpickles. "
                                  "Re-save it with PEFT's save_pretrained(..., safe_serialization=True)")
        raise CheckpointError(f"{weights}: not found")
    try:
        with safe_open(str(weights), framework="pt") as f:
            if "prompt_embeddings" not in f.keys():
                raise CheckpointError(f"{weights}: no 'prompt_embeddings' tensor (keys: {sorted(f.keys())[:5]})")
            table = f.get_tensor("prompt_embeddings")
    except SafetensorError as err:
        raise CheckpointError(f"{weights}: not a valid safetensors file: {err}") from None
    n = config.get("num_virtual_tokens")
    if table.ndim != 2 or not table.is_floating_point() or (isinstance(n, int) and table.shape[0] != n):
        raise CheckpointError(f"{weights}: prompt_embeddings has shape {tuple(table.shape)} and dtype {table.dtype}; "
                              f"expected ({n}, token_dim) floats")
    if ptype == peft_prefix.PREFIX_TYPE:
        problem = peft_prefix.prefix_table_problem(config, tuple(table.shape))
        if problem:
            raise CheckpointError(f"{weights}: {problem}")
    elif config.get("token_dim") not in (None, table.shape[1]):
        raise CheckpointError(f"{weights}: width {table.shape[1]} disagrees with token_dim {config['token_dim']}")
    table = table.float()
    if not torch.isfinite(table).all():
        raise CheckpointError(f"{weights}: prompt_embeddings holds NaN or infinite values")
    return config, table


def import_peft(peft_dir: str | Path, out_dir: str | Path, *, template: str | None = None,
                model: str | None = None, task_type: str | None = None, label_column: str | None = None,
                verbalizer: dict | None = None, overrides: list[str] | tuple = ()) -> dict:
    """Write a ptune checkpoint that predicts as the adapter does, plus a resumable training state at step 0, so
    ``ptune train DIR/train.yaml --out DIR --resume --set data.train=...`` continues training the imported table.
    A P-tuning or prompt-tuning adapter becomes an ``embedding`` encoder initialised from its table; a prefix-tuning
    adapter a deep prompt (``encoder.deep_tokens``, ``deep_encoder: table``) holding its keys and values, with a
    template of no ``[P]`` tokens. Returns a summary."""
    import yaml

    from ..template import parse_template

    peft_dir, out_dir = Path(peft_dir), Path(out_dir)
    if out_dir.resolve() == peft_dir.resolve():
        raise PtuneError(f"--out {out_dir} is the adapter's own folder; the import writes a new checkpoint folder "
                         "and leaves the adapter as it is: choose another --out")
    adapter, table = read_peft_adapter(peft_dir)
    deep = str(adapter.get("peft_type", "")).upper() == peft_prefix.PREFIX_TYPE
    n, dim = table.shape
    checkpoint.check_out_dir(out_dir)  # no checkpoint yet, no model's or adapter's files

    cfg = _import_config(peft_dir, adapter, deep, n, model=model, template=template, task_type=task_type,
                         label_column=label_column, verbalizer=verbalizer, overrides=overrides)
    if cfg.encoder.type != "embedding" or (deep and (cfg.encoder.deep_tokens, cfg.encoder.deep_encoder) != (
            n, "table")):
        raise PtuneError("an imported table is an `embedding` encoder (a prefix-tuning adapter's: encoder.deep_tokens "
                         f"{n}, deep_encoder table); encoder.type, deep_tokens and deep_encoder cannot be overridden")

    tpl = parse_template(cfg.task.template)
    if tpl.n_virtual != (0 if deep else n):
        fix = "a template without [P] tokens (the adapter's keys and values come before the text at every layer)" \
            if deep else f"[P*{n}] first"
        raise PtuneError(f"template {tpl.source!r} has {tpl.n_virtual} virtual tokens but the adapter has "
                         f"{0 if deep else n}; give --template with {fix}")
    _, identity, kind, hf_config, tokenizer = _base_and_tokenizer(cfg.model)
    if deep:
        try:
            layout = peft_prefix.import_layout(adapter, hf_config)
        except ValueError as err:
            raise PtuneError(f"{peft_dir}: {err}") from None
    elif identity["hidden_size"] != dim:
        raise PtuneError(f"{peft_dir}: prompt width {dim} but {cfg.model.name_or_path!r} has hidden size "
                         f"{identity['hidden_size']}; give --model with the adapter's base model")
    tpl.validate(kind=kind, needs_virtual=not deep)
    _check_compatible(tpl, kind, tokenizer, f"import {peft_dir}", cfg.encoder.deep_tokens)
    labels = None
    if cfg.task.type == "classification":
        if not cfg.task.verbalizer:
            raise PtuneError("a classification task needs its labels: give --verbalizer LABEL=WORD for each label "
                             "(or --task generation)")
        labels = LabelSpace.build(cfg.task.verbalizer).to_dict()

    imported = {"imported_from": {"peft_dir": str(peft_dir), "peft_type": adapter.get("peft_type")}}
    if deep:
        _save_deep(cfg, labels, table, layout, out_dir, imported)
    else:
        _save_prompt(cfg, labels, identity, table, out_dir, imported)
    checkpoint.write_atomic(out_dir / "train.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
    return {"out": str(out_dir), "peft_type": adapter.get("peft_type"), "num_virtual_tokens": int(n),
            "template": cfg.task.template, "task": cfg.task.type, "labels": labels,
            "continue_training": f"ptune train {out_dir / 'train.yaml'} --out {out_dir} --resume "
                                 "--set data.train=TRAIN_FILE"}


def _import_config(peft_dir: Path, adapter: dict, deep: bool, n: int, *, model, template, task_type, label_column,
                   verbalizer, overrides):
    """The imported checkpoint's config: a ptune export's own, else one for the adapter's base model and a template
    with its prompt; the options given on top, an ``embedding`` encoder (with a prefix-tuning adapter's deep prompt
    as a ``table``), and no data paths."""
    from ..config import apply_overrides, config_from_dict

    exported = _read_json(peft_dir / EXPORT_META) if (peft_dir / EXPORT_META).is_file() else None
    if exported is not None and exported.get("format") == EXPORT_FORMAT and isinstance(exported.get("config"), dict):
        values = json.loads(json.dumps(exported["config"]))  # a ptune export: its own config comes back
    else:
        default = "{text} [TARGET]" if deep else f"[P*{n}] {{text}} [TARGET]"
        values = {"model": {"name_or_path": adapter.get("base_model_name_or_path")},
                  "task": {"type": "classification", "template": default}}
    values.setdefault("model", {})
    values.setdefault("task", {})
    if model:
        values["model"].update(name_or_path=model, gguf_file=None)
    if not values["model"].get("name_or_path"):
        raise PtuneError(f"{peft_dir}: the adapter names no base model (base_model_name_or_path); give --model")
    if template is not None:
        values["task"]["template"] = template
    if task_type is not None:
        values["task"]["type"] = task_type
    if label_column is not None:
        values["task"]["label_column"] = label_column
    if verbalizer:
        values["task"]["verbalizer"] = dict(verbalizer)
    values["encoder"] = {"type": "embedding", "deep_tokens": n, "deep_encoder": "table"} if deep else \
        {"type": "embedding"}
    data = values.setdefault("data", {})
    for split in ("train", "dev", "test"):
        data.pop(split, None)  # never train on paths from another machine by accident
    return config_from_dict(apply_overrides(values, list(overrides)))


def _save_prompt(cfg, labels: dict | None, identity: dict, table: torch.Tensor, out_dir: Path, extra: dict) -> None:
    """The checkpoint of an imported prompt table, and a training state at step 0 that ``--resume`` continues."""
    encoder_state = {"encoder.table": table}
    checkpoint.save_model(out_dir, config=cfg.to_dict(), labels=labels, base=identity, encoder_state=encoder_state,
                          prompts=table, extra=extra)
    param = torch.nn.Parameter(table.clone())
    optimizer = torch.optim.AdamW([param], lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    checkpoint.save_state(out_dir, encoder_state=encoder_state, optimizer=optimizer, progress=Progress().__dict__)


def _save_deep(cfg, labels: dict | None, table: torch.Tensor, layout: tuple[int, int, int], out_dir: Path,
               extra: dict) -> None:
    """The checkpoint of an imported deep table, written as training writes one: a session over the base model
    builds the model, whose real KV cache ``layout`` (layers, heads, head_dim as PEFT reshapes the table) must
    match, then the inference checkpoint and a training state at step 0 that ``--resume`` continues."""
    from ..session import open_session
    from ..training.saving import save_inference

    session = open_session(cfg, labels=LabelSpace.build(cfg.task.verbalizer) if labels else None,
                           allow_no_virtual=True)
    model = session.new_model(seed=cfg.train.seed)
    real = model.deep.layout
    if (real.layers, real.heads, real.head_dim) != tuple(layout):
        raise PtuneError(f"the adapter's table is {layout[0]} layers of {layout[1]} key/value heads of width "
                         f"{layout[2]}, but {cfg.model.name_or_path!r}'s KV cache holds {real.layers} layers of "
                         f"{real.heads} heads of width {real.head_dim}; give --model with the adapter's base model")
    with torch.no_grad():
        model.deep.table.copy_(table.to(model.deep.table.device))
    model.clear_prompt_cache()
    save_inference(session, model, out_dir, extra=extra)
    params = [p for p in [*model.encoder.parameters(), *model.deep.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    checkpoint.save_state(out_dir, encoder_state=model.trainable_state(), optimizer=optimizer,
                          progress=Progress().__dict__)
