"""``python -m romer_aihwkit.cli`` (used by ``accelerate launch``)."""

from . import main

main()
