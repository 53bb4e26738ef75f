"""The ``ntpool`` command line: the edge where the model meets files and the terminal."""
