"""The codebase's shape: the README's P-BFGS loop runs as written, the README stays short and every
relative link of it and of docs/ leads to a file, files stay small, every --arch is defined under
its own name."""
import json
import os
import re
import subprocess
import sys

import pytest

import models
from conftest import ROOT, THREADS


def readme_block(name):
    text = open(os.path.join(ROOT, "README.md")).read()
    block = text.split(f"<!-- {name}:start -->")[1].split(f"<!-- {name}:end -->")[0]
    return block.split("```python\n")[1].split("```")[0]


CHECK_AFTER_THE_README = """
import json, sys
start = dldr.load_sample_matrix(folder, model, [0], "resnet8")[0].double()
delta = torch.nn.utils.parameters_to_vector(model.parameters()).double() - start
outside = (delta - basis.T @ (basis @ delta)).norm() / delta.norm()
print(json.dumps({"dldr": dldr.__file__, "models": models.__file__, "steps": len(opt.search_steps),
                  "moved": delta.norm().item(), "outside": outside.item(), "path": sys.path}))
"""


@pytest.mark.end_to_end
def test_readme_loop_runs_from_another_folder_with_the_installed_package(tmp_path):
    """The README's own-loop section, as a user runs it: in a folder outside the repository, with
    no PYTHONPATH, so ``import dldr`` and ``import models`` come from the installed package."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", readme_block("pbfgs-loop") + CHECK_AFTER_THE_README],
                         cwd=tmp_path, env=dict(env, OMP_NUM_THREADS=THREADS), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert sum(line.startswith("P-BFGS epoch ") for line in lines) == 2
    got = json.loads(lines[-1])
    assert ROOT not in got["path"] and str(tmp_path) not in os.path.dirname(got["dldr"])
    assert got["dldr"] == os.path.join(ROOT, "dldr", "__init__.py")  # the editable install
    assert got["models"] == os.path.join(ROOT, "models", "__init__.py")
    assert got["steps"] == 2 * 12  # 2 epochs of 12 batches of 128 DIGITS images
    assert got["moved"] > 0 and got["outside"] < 1e-4  # it trained, in sample 0 + span(P)
    assert sorted(os.listdir(tmp_path / "my_samples")) == [f"{e}.pt" for e in range(5)]


def test_readme_is_short_and_starts_with_the_newcomers_commands():
    path = os.path.join(ROOT, "README.md")
    assert os.path.getsize(path) <= 12_500, os.path.getsize(path)
    first = open(path).read().split("```")[1]
    assert "pip install -r requirements.txt" in first and "./run.sh demo" in first


def _prose(path):
    """A Markdown file's text without its fenced code blocks, where `](` and `#` are code."""
    return re.sub(r"^```.*?^```", "", open(path).read(), flags=re.S | re.M)


def _broken_links(page):
    """The relative links ``](path)`` / ``](path#anchor)`` of ``page`` whose file is missing, or
    whose anchor names no heading of that file (GitHub's ids); http: and other schemes are skipped."""
    broken, links = [], re.findall(r"\]\(([^)\s]+)\)", _prose(page))
    for target in links:
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(resolved):
            broken.append(target)
        elif anchor and resolved.endswith(".md"):
            headings = re.findall(r"^#+ (.*)$", _prose(resolved), re.M)
            ids = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
            if anchor not in ids:
                broken.append(target)
    return broken, len(links)


def test_every_relative_link_of_the_readme_and_docs_leads_to_a_file():
    docs = os.path.join(ROOT, "docs")
    pages = [os.path.join(ROOT, "README.md")] + sorted(
        os.path.join(docs, f) for f in os.listdir(docs) if f.endswith(".md"))
    assert len(pages) > 1
    found = {os.path.relpath(page, ROOT): _broken_links(page) for page in pages}
    assert sum(n for _, n in found.values()) > 10
    assert not {page: broken for page, (broken, _) in found.items() if broken}


def test_no_source_file_outside_tests_is_over_600_lines():
    tracked = subprocess.run(["git", "-C", ROOT, "ls-files", "*.py"], capture_output=True,
                             text=True).stdout.split() or [
        os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(ROOT) for f in fs
        if f.endswith(".py") and ".venv" not in d]
    sizes = {path: sum(1 for _ in open(os.path.join(ROOT, path))) for path in tracked
             if not path.startswith("tests/") and os.path.exists(os.path.join(ROOT, path))}
    assert sizes and max(sizes.values()) <= 620, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_every_arch_is_defined_under_its_own_name():
    sources = "".join(open(os.path.join(ROOT, "models", f)).read()
                      for f in os.listdir(os.path.join(ROOT, "models")) if f.endswith(".py"))
    for name in models.names():
        assert re.search(rf"^@register\ndef {name}\(", sources, re.M), name


def test_no_import_cycle_inside_dldr():
    """Every relative import of dldr/, at the top of a module or inside a function: a graph
    without cycles."""
    import ast
    graph = {}
    folder = os.path.join(ROOT, "dldr")
    for name in os.listdir(folder):
        if name.endswith(".py") and name != "__init__.py":
            tree = ast.parse(open(os.path.join(folder, name)).read())
            graph[name[:-3]] = {(n.module or "").split(".")[0] or a.name for n in ast.walk(tree)
                                if isinstance(n, ast.ImportFrom) and n.level == 1
                                for a in n.names}
    assert graph and all(deps <= set(graph) for deps in graph.values()), graph
    done, on_path = set(), []

    def visit(module):
        assert module not in on_path, " -> ".join(on_path[on_path.index(module):] + [module])
        if module not in done:
            on_path.append(module)
            for dep in graph[module]:
                visit(dep)
            on_path.pop()
            done.add(module)
    for module in graph:
        visit(module)
