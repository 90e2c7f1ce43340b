"""What every command line shares: quiet by default, and one line for the user's mistakes.

    def cli():
        _define_flags()
        molbind_data.cli.run(main)

This is the JAX-free wrapper of the data side (`molbind-build`); molbind_jax/cli.py reuses it
for the model commands and adds the model side's own input errors.

* Logging: libraries (TensorFlow, absl, orbax, TFDS) log at WARNING and above unless the user
  asks for more with `--verbosity=0` (INFO) or `--verbosity=1` (DEBUG); absl's own flag,
  whose default becomes -1 (WARNING) here. TensorFlow's C++ start-up lines are silenced with
  TF_CPP_MIN_LOG_LEVEL=2 (unless the environment sets it), before the command imports
  TensorFlow. The project's loggers (`molbind_jax.*`, `molbind_data.*`) stay at INFO.
  Progress bars and the command's own results are printed, not logged.
* Errors that are the user's (a missing or wrong path, a file that is not what it should be,
  a flag value that does not fit) print as ONE line `error: <message>` on stderr and exit
  with status 2, no traceback: FileNotFoundError and its relatives, `InputError` (raise it,
  or a subclass, for bad input) and the errors a caller adds. Anything else is a bug and
  keeps its traceback.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Sequence


class InputError(ValueError):
    """Bad input from the user (a flag value, a file's content): one line, exit status 2."""


USER_ERRORS: tuple[type[BaseException], ...] = (InputError, FileNotFoundError, NotADirectoryError,
                                                IsADirectoryError, PermissionError, UnicodeDecodeError)


def one_line(err: BaseException) -> str:
    """The message of an error on one line (a multi-line message keeps its first lines)."""
    text = str(err).strip() or type(err).__name__
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines[:12]) + (" ..." if len(lines) > 12 else "")


def quiet_logging(verbosity: int) -> None:
    """Library logs at WARNING unless verbosity >= 0 (INFO) or >= 1 (DEBUG)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if verbosity < 0 else "0")
    level = logging.WARNING if verbosity < 0 else (logging.INFO if verbosity == 0 else logging.DEBUG)
    logging.getLogger().setLevel(level)
    for name in ("absl", "jax", "orbax", "tensorflow", "etils", "tensorflow_datasets"):
        logging.getLogger(name).setLevel(level)
    # The project's own messages (a resumed run, a tower's key report) are for the user: INFO.
    for name in ("molbind_jax", "molbind_data"):
        logging.getLogger(name).setLevel(min(level, logging.INFO))


def run(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None,
        errors: Sequence[type[BaseException]] = ()) -> None:
    """absl's app.run(main) with the behaviour of the module docstring; `errors` are more
    exception types to treat as the user's."""
    from absl import app, flags

    caught = USER_ERRORS + tuple(errors)

    def wrapped(args):
        from absl import logging as absl_logging

        # absl's own default (0, INFO) does not stick through set_default: unless the user
        # gave --verbosity, the commands run at -1 (WARNING).
        verbosity = flags.FLAGS.verbosity if flags.FLAGS["verbosity"].present else -1
        quiet_logging(verbosity)
        absl_logging.set_verbosity(max(verbosity, -1))
        try:
            return main(args)
        except caught as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped, argv=list(argv) if argv is not None else None)
