"""The package's modules import each other without cycles, and no module
imports another module's private names."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "monolith_tf")


def _modules():
    """{module name: parsed source} of every module in monolith_tf."""
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(root, file)
                relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3]
                name = relative.replace(os.sep, ".")
                if name.endswith(".__init__"):
                    name = name[:-len(".__init__")]
                with open(path) as f:
                    found[name] = ast.parse(f.read(), path)
    return found


def _imports(tree):
    """(module, imported names) of every import in ``tree``, at any depth
    (an import inside a function is still a dependency)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


MODULES = _modules()


def _graph():
    graph = {name: set() for name in MODULES}
    for name, tree in MODULES.items():
        for module, names in _imports(tree):
            # "from pkg import submodule" depends on the submodule; "from
            # module import thing" on the module.
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            targets = submodules if submodules and len(submodules) == len(names) else [module]
            graph[name].update(t for t in targets if t in MODULES and t != name)
    return graph


def test_modules_were_found():
    assert {"monolith_tf.table", "monolith_tf.training", "monolith_tf.streaming.log",
            "monolith_tf.streaming.embedded_log"} <= set(MODULES)


def test_no_import_cycle():
    graph = _graph()
    visiting, done, path = set(), set(), []

    def visit(node):
        if node in done:
            return
        if node in visiting:
            cycle = path[path.index(node):] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        visiting.add(node)
        path.append(node)
        for target in sorted(graph[node]):
            visit(target)
        path.pop()
        visiting.discard(node)
        done.add(node)

    for name in sorted(graph):
        visit(name)


def test_no_module_imports_private_names_of_another():
    offenders = []
    for name, tree in MODULES.items():
        for module, names in _imports(tree):
            if module.startswith("monolith_tf") and module != name:
                offenders += [f"{name}: {module}.{n}" for n in names
                              if n.startswith("_") and not n.startswith("__")]
    assert offenders == []


def _reachable(start, graph):
    seen, stack = set(), [start]
    while stack:
        for target in graph[stack.pop()]:
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


TRAINER_SIDE = ["monolith_tf.training", "monolith_tf.sync.publisher", "monolith_tf.export",
                "monolith_tf.checkpoint_policy", "monolith_tf.layers", "monolith_tf.cli.train_cmd"]
SERVER_SIDE = ["monolith_tf.serving.server", "monolith_tf.sync.follower",
               "monolith_tf.sync.sinks", "monolith_tf.sync.replica",
               "monolith_tf.cli.serve_cmd", "monolith_tf.cli.sync_agent_cmd"]
KERAS_AND_CHECKPOINTS = {"monolith_tf.layers", "monolith_tf.export", "monolith_tf.training",
                         "monolith_tf.sparse_checkpoint", "monolith_tf.dense_checkpoint",
                         "monolith_tf.checkpoint_policy"}


@pytest.mark.parametrize("module", TRAINER_SIDE)
def test_the_trainer_side_does_not_import_the_server(module):
    reached = _reachable(module, _graph())
    assert not {m for m in reached if m.startswith("monolith_tf.serving")}, module


@pytest.mark.parametrize("module", SERVER_SIDE)
def test_the_server_and_agent_import_no_keras_layers_or_checkpointers(module):
    assert not _reachable(module, _graph()) & KERAS_AND_CHECKPOINTS, module


def test_the_graph_sees_imports_it_guards():
    """The checks above would pass on an empty graph: the graph must see the
    edges that do exist."""
    graph = _graph()
    assert "monolith_tf.serving.server" in _reachable("monolith_tf.sync.replica", graph)
    assert "monolith_tf.layers" in _reachable("monolith_tf.sync.publisher", graph)


def test_the_package_imports_nothing_eagerly():
    """``monolith_tf/__init__.py`` imports no submodule at module level: its
    exports load on first use."""
    tree = MODULES["monolith_tf"]
    eager = [node.module for node in tree.body
             if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("monolith_tf")]
    eager += [alias.name for node in tree.body if isinstance(node, ast.Import)
              for alias in node.names if alias.name.startswith("monolith_tf")]
    assert eager == []
