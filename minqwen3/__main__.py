import os
import signal
import sys

# Ctrl-C before the model is loaded leaves at once, status 130 (cli.leave); cli.load hands Ctrl-C back to
# KeyboardInterrupt once it is ready. Set first, so that no import is ever cut halfway by the interrupt.
signal.signal(signal.SIGINT, lambda *_: os._exit(130))

from .cli import leave, main  # noqa: E402

signal.signal(signal.SIGINT, leave)
code = main()
if code == 130:
    leave()
sys.exit(code)
