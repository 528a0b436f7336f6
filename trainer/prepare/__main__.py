"""`python -m trainer.prepare ...` (TRUSTED, host only): see trainer.prepare.cli."""
import sys

from .cli import main

sys.exit(main())
