"""Run the osqueue command line with ``python -m osqueue``."""

from osqueue.cli import main

if __name__ == "__main__":
    main()
