import os
import sys


def _quit_130() -> None:
    """Ctrl-C: leave at once, status 130. Skipping the interpreter's shutdown matters: after an interrupted import
    (torch, while loading) the shutdown can re-raise the signal and end the process with -SIGINT instead."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while Python is still starting up: as quiet as Ctrl-C later (cli.main)
    _quit_130()

code = main()
if code == 130:
    _quit_130()
sys.exit(code)
