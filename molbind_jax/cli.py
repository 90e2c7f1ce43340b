"""What every command line shares: quiet by default, and one line for the user's mistakes.

    def cli():
        _define_flags()
        molbind_jax.cli.run(main)

The wrapper itself is the data side's (data_pipeline/cli.py, imported as `molbind_data.cli`,
which `molbind-build` uses too); this module adds the model side's input errors.

* Logging: libraries (orbax, TensorFlow, absl) log at WARNING and above unless the user asks
  for more with `--verbosity=0` (INFO) or `--verbosity=1` (DEBUG); absl's own flag, whose
  default becomes -1 (WARNING) here. The project's loggers (`molbind_jax.*`) stay at INFO:
  a resumed run or a tower's key report is meant to be read. Progress bars and the command's own results are printed,
  not logged.
* Errors that are the user's (a missing or wrong path, a file that is not what it should be,
  a flag value that does not fit) print as ONE line `error: <message>` on stderr and exit
  with status 2, no traceback: FileNotFoundError and its relatives, `InputError` (raise it,
  or a subclass, for bad input; the same class as `molbind_data.cli.InputError`, so a data
  error met by a model command counts too), and the project's own input errors
  (`CheckpointError`, `InitError`). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

from typing import Callable, Sequence

from molbind_data import cli as _data_cli
from molbind_data.cli import InputError, one_line, quiet_logging  # noqa: F401  (this module's API)


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = list(_data_cli.USER_ERRORS)
    for module, name in (("molbind_jax.convert.common", "CheckpointError"),
                         ("molbind_jax.training.pretrained", "InitError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except ImportError:  # an optional part that is not installed cannot raise its error
            pass
    return tuple(errors)


def run(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> None:
    """absl's app.run(main) with the behaviour of the module docstring."""
    _data_cli.run(main, argv, errors=_user_errors())
