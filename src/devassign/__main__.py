"""``python -m devassign``: the ``devassign`` command, where the console script is not on PATH
(a virtual environment not activated, a system unit that names the interpreter)."""

from devassign.cli.main import main

main()
