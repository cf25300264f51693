"""The command line, ``python -m cam_mnist COMMAND``: argument parsing and printing only, a module per command group."""
