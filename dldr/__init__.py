"""The pieces behind utils.py, one concern a file; utils.py's docstring maps them."""
