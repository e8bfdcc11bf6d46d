"""The ``reft`` command line: a thin argparse shell over the library, one file per subcommand."""
