"""``python -m wsicount``."""

from .cli import main

main()
