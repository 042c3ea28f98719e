"""``python -m dreamsearch``: the same as the ``dreamsearch`` command."""

from dreamsearch.cli import main

main()
