"""The programs behind the ``worker`` subcommands: the worker loop (``serve``), the accuracy
monitor, training (with its dataset files) and the clickstream simulator."""
