"""`tfds build` for these builders, in an environment without apache_beam.

The `tfds` console script of tensorflow-datasets 4.9.10 imports its `convert_format` command
at start-up, which defines Apache Beam classes, so `tfds build ...` fails here with
"No module named 'apache_beam'" before reaching any builder. This runs the very same `build`
command (tensorflow_datasets.scripts.cli.build.Args, same flags) without the other commands:

    python -m molbind_data.molbind_pairs.tfds_build molbind_mini --config=graph_conformer \
        --data_dir=DIR [--max_examples_per_split=N]

With apache_beam installed, `tfds build molbind_mini --imports=molbind_data.molbind_pairs.builder`
is equivalent.
"""
import sys

import simple_parsing
from absl import flags
from tensorflow_datasets.scripts.cli import build as tfds_build

import molbind_data.molbind_pairs.builder  # noqa: F401  (registers molbind_mini/_m4/_pairs)


def main(argv: list[str]) -> None:
    flags.FLAGS(argv[:1])  # TFDS reads absl flags internally; ours are all TFDS build flags
    args = simple_parsing.parse(tfds_build.Args, args=argv[1:], prog="tfds_build")
    args.execute()


if __name__ == "__main__":
    main(sys.argv)
