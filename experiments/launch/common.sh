# Shared by the launch recipes (sourced from the repository root): the m4 config, the backbone
# flags and the dry-run mode.
#
# Backbones (the original's ./backbone files, model/bind.py 52-54, 66-67, 79-82, 93-96), as seen
# from the machines that train: BACKBONE_DIR holding
#     scibert_scivocab_uncased/   HF SciBERT directory (config.json, vocab.txt, weights)
#     graph_pretrain.pth          Hu et al. GIN
#     mol_pretrain.pt             Uni-Mol molecules
#     protein_pretrain.pt         Uni-Mol pockets
#     unimol_dict_mol.txt         Uni-Mol dictionaries (dict.txt; checked against the built-in
#     unimol_dict_pro.txt         order at start)
# or one variable per file, which wins over BACKBONE_DIR: TEXT_INIT GRAPH_INIT CONFORMER_INIT
# POCKET_INIT MOL_DICT POCKET_DICT (MOL_DICT= / POCKET_DICT= empty: no dictionary check). A
# backbone left unset makes the run stop at start, naming it.
#
# CONFIG       the training config (default experiments/configs/m4.py; variants as m4.py:parity)
# DRYRUN=1     instead of launching, compile one train step of CONFIG on DEVICES simulated CPU
#              devices here (python -m molbind_jax.training.dryrun) and print per-device memory and FLOPs;
#              the recipe's positional arguments are ignored, its --config.* flags are kept.
# DEVICES      the target's device count for the dry run (default 8): per-device batch =
#              batch_size / DEVICES.
# PY           the Python to run (default .venv/bin/python).

CONFIG="${CONFIG:-experiments/configs/m4.py}"
PY="${PY:-.venv/bin/python}"

# Fills INIT_FLAGS with a --config.init.* flag per backbone that is set (an unset one keeps
# the config's own value).
init_flags() {
  local dir="${BACKBONE_DIR:-}" key value
  INIT_FLAGS=()
  for key in text graph conformer pocket conformer_dictionary pocket_dictionary; do
    case "$key" in
      text) value="${TEXT_INIT:-${dir:+$dir/scibert_scivocab_uncased}}" ;;
      graph) value="${GRAPH_INIT:-${dir:+$dir/graph_pretrain.pth}}" ;;
      conformer) value="${CONFORMER_INIT:-${dir:+$dir/mol_pretrain.pt}}" ;;
      pocket) value="${POCKET_INIT:-${dir:+$dir/protein_pretrain.pt}}" ;;
      conformer_dictionary) value="${MOL_DICT-${dir:+$dir/unimol_dict_mol.txt}}" ;;
      pocket_dictionary) value="${POCKET_DICT-${dir:+$dir/unimol_dict_pro.txt}}" ;;
    esac
    [ -n "$value" ] && INIT_FLAGS+=("--config.init.$key=$value")
  done
  return 0
}

# With DRYRUN=1: runs the dry run of CONFIG with the --config.* flags among "$@" and exits.
maybe_dryrun() {
  [ "${DRYRUN:-0}" = "1" ] || return 0
  local kept=() a
  for a in "$@"; do
    case "$a" in --*) kept+=("$a") ;; esac
  done
  exec "$PY" -m molbind_jax.training.dryrun --config="$CONFIG" --devices="${DEVICES:-8}" ${kept[@]+"${kept[@]}"}
}
