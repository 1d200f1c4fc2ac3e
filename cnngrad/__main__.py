"""``python -m cnngrad`` is ``cnngrad``."""
from .cli import main

main()
