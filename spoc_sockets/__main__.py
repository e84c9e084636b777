"""``python -m spoc_sockets``: the demo server (:mod:`spoc_sockets.demo`)."""

from .demo import main

if __name__ == "__main__":
    main()
