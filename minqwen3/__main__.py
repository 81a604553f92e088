import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while Python is still starting up: as quiet as Ctrl-C later (cli.main)
    sys.exit(130)

sys.exit(main())
