"""``python -m bft``: the same as the ``bft`` command."""

from .cli import main

raise SystemExit(main())
