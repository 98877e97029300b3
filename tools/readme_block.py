"""Replace the text between two markers of a Markdown file (the tools' generated tables): README.md
by default, or a page under docs/."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def replace(name, text, path="README.md"):
    """Put ``text`` between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path``, a file
    relative to the repository root (README.md unless told)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    path = os.path.join(ROOT, path)
    with open(path) as f:
        page = f.read()
    head, rest = page.split(start)
    _, tail = rest.split(end)
    with open(path, "w") as f:
        f.write(f"{head}{start}\n{text}\n{end}{tail}")
