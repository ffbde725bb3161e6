"""`python -m streamfit` is the `streamfit` command."""
import sys

from .cli import main

sys.exit(main())
