"""``python -m taskq``: the same entry point as the ``taskq`` console script."""

from taskq._entry import main

if __name__ == "__main__":
    main()
