"""``python -m gametheory_defense`` runs the ``gtdefense`` command line."""

from gametheory_defense.cli import main

raise SystemExit(main())
