"""Replace the text between two markers of README.md (the tools' generated tables)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def replace(name, text):
    """Put ``text`` between ``<!-- name:start -->`` and ``<!-- name:end -->`` in README.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    path = os.path.join(ROOT, "README.md")
    with open(path) as f:
        readme = f.read()
    head, rest = readme.split(start)
    _, tail = rest.split(end)
    with open(path, "w") as f:
        f.write(f"{head}{start}\n{text}\n{end}{tail}")
