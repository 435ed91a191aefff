"""The errors lmlab raises, defined here and imported by the modules that raise them (so this
module imports none of lmlab); those a user causes and can fix are reported in one line instead
of a traceback. And the exit statuses.

Exit status: 0 done; 1 a bug (with its traceback), or another process of a multi-process launch
lost (one line); 2 bad input, a checkpoint that cannot be written or resumed into this run, or
training diverged; 75 (EX_TEMPFAIL) stopped by a signal after saving a checkpoint: the message ends
with the command that resumes; 130 interrupted (Ctrl-C) before training began, so with nothing to
save. docs/reliability.md says more.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

from hydra.errors import HydraException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException


SCHEMA_PREFIX = "base_"  # schema nodes are `base_<group>` in each group: defaults, never a user's choice


class ConfigError(ValueError):
    """A bad config value: the message names the key and the reason."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")


class DataError(RuntimeError):
    """The data cannot be read: the message says what to do about it."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, written or resumed into this run."""


class TrainingDiverged(RuntimeError):
    """The loss, the validation loss or the weights stopped being finite; no checkpoint of those
    weights or later ones is left."""


class Preempted(Exception):
    """A stop signal arrived; a checkpoint of the current step was saved first."""


class LostProcess(RuntimeError):
    """Another process of the launch died or stopped answering: this one stops too."""


EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130
_FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user's wish, read before report_errors sets it
# What can go wrong before any compute is told apart without importing torch (which takes
# seconds), so a mistyped override is answered at once.
_BEFORE_COMPUTE = (ConfigError, HydraException, OmegaConfBaseException, OSError)


def user_errors() -> tuple[type[Exception], ...]:
    """Every error a user causes and can fix."""
    return (*_BEFORE_COMPUTE, DataError, CheckpointError, TrainingDiverged)


# Hydra's reports end in a config search path and a docs link, and OmegaConf's repeat the key
# and its types on indented lines: none of it says more than the first lines do.
_STOP = ("Config search path", "See https://hydra.cc")
_NOISE = ("full_key:", "reference_type=", "object_type=", "To append to your config")


def one_line(e: BaseException) -> str:
    """A Hydra, OmegaConf or lmlab error as one line; indented option lists become comma lists."""
    if isinstance(e, OSError) and e.filename:
        return f"cannot write or read {e.filename}: {e.strerror}"
    text = str(e)
    if isinstance(e, OverrideParseException):
        text = f"cannot parse the override {e.override!r}: {text}"
    if isinstance(e.__cause__, OmegaConfBaseException):
        text += "\n" + str(e.__cause__)
    parts: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(_STOP):
            break
        if not line or line.startswith(_NOISE):
            continue
        # Hydra lists a group's schema node among its options; no user picks it.
        if raw.startswith("\t") and parts and parts[-1].startswith("Available options") and \
                line.startswith(SCHEMA_PREFIX):
            continue
        if raw.startswith("\t") and parts:
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
        else:
            parts.append(line.rstrip("."))
    return "; ".join(parts)


def exit_for(e: BaseException, prog: str = "lmlab") -> None:
    """Exit for a user's mistake (one line on stderr, status 2) or a preemption (its message, 75);
    return for anything else, a bug, whose traceback the caller lets through."""
    if not isinstance(e, _BEFORE_COMPUTE):
        if isinstance(e, Preempted):
            print(f"{prog}: {e}", file=sys.stderr)
            sys.exit(EXIT_PREEMPTED)
        if isinstance(e, LostProcess):  # a failure, not the user's input: status 1, but no traceback
            print(f"{prog}: error: {e}", file=sys.stderr)
            sys.exit(1)
        if not isinstance(e, user_errors()):
            return
    if not _FULL_ERROR:
        exit_bad_input(e, prog)


def exit_bad_input(e: BaseException, prog: str) -> None:
    """For entry points without Hydra (generate, export): the error in one line, exit status 2."""
    print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def end_at_closed_pipe() -> None:
    """Exit 0 after the reader closed stdout (`--help | head -2`): that reader has what it wanted.
    stdout goes to devnull first, so the interpreter's last flush finds no broken pipe (Python's
    docs, "Note on SIGPIPE")."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


def report_errors(entry: Callable[[], object], prog: str = "lmlab") -> None:
    """Run a Hydra entry point, reporting through `exit_for` what goes wrong before or after the
    task function (which calls `exit_for` itself: Hydra would add a line to what it re-raises)."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then re-raises instead of printing its own report
    try:
        entry()
    except KeyboardInterrupt:  # during training a Ctrl-C is a stop signal; before, nothing is lost
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:  # an OSError, but no file of the user's: the reader of stdout left
        end_at_closed_pipe()
    except Exception as e:
        exit_for(e, prog)
        raise
    finally:
        if not _FULL_ERROR:
            os.environ.pop("HYDRA_FULL_ERROR", None)
