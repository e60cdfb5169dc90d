"""Model input and output: files, external data, atomic writes, shapes, and graphs for the back end."""
