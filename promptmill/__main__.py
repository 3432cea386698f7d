"""``python -m promptmill`` runs the command line."""

from promptmill.cli import main

main()
