"""The package's import graph, read from the source (ast): no cycles, counting the
imports inside functions too, so that none can hide one; and the leaf modules
stay leaves."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'sagan_jax'


def imports_of(path: pathlib.Path) -> set[str]:
  """The sagan_jax modules a file imports anywhere in it (module level or in a function)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name.split('.')[1] for a in node.names if a.name.startswith('sagan_jax.')}
    elif isinstance(node, ast.ImportFrom) and node.module == 'sagan_jax':
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('sagan_jax.'):
      out.add(node.module.split('.')[1])
  return out


def import_graph() -> dict[str, set[str]]:
  return {p.stem: imports_of(p) for p in PACKAGE.glob('*.py') if p.stem != '__init__'}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
  """One cycle of the graph as [a, b, ..., a], or [] if there is none (depth-first search)."""
  state = {}  # module -> 'open' while on the search path, 'done' after

  def visit(module, path):
    state[module] = 'open'
    for other in sorted(graph.get(module, ())):
      if state.get(other) == 'open':
        return path[path.index(other):] + [module, other] if other in path else [module, other]
      if other not in state:
        cycle = visit(other, path + [module])
        if cycle:
          return cycle
    state[module] = 'done'
    return []

  for module in sorted(graph):
    if module not in state:
      cycle = visit(module, [])
      if cycle:
        return cycle
  return []


def test_find_cycle_finds_one_and_only_one():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) == []
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'a'}}) == ['a', 'a']


def test_no_import_cycles_in_the_package():
  graph = import_graph()
  assert {'train', 'evaluation', 'input_pipeline', 'resized_dataset'} <= set(graph)
  assert graph['train'] >= {'evaluation', 'checkpoint'}  # the parser sees real imports
  assert find_cycle(graph) == [], ' -> '.join(find_cycle(graph))


def test_leaf_modules_stay_leaves():
  graph = import_graph()
  for leaf in ('mesh', 'weights', 'preprocessing', 'train_state', 'options', 'cpu_kernels',
               'losses', 'metrics', 'events', 'digits_dataset', 'shapes_dataset',
               'architectures', 'chips'):
    assert graph[leaf] == set(), (leaf, graph[leaf])
  # The device policy decides from a target platform and the networks' shapes alone, so
  # that the config's checks and the models follow a target that is not this host.
  assert graph['device_policy'] == {'architectures'}
  assert graph['logs'] == {'events'}  # its metric writer writes TensorBoard's event files
  # The paper's layers use the CPU kernels and nothing else of the package.
  assert graph['layers'] == {'cpu_kernels'}
  # The fixed networks of evaluation depend on nothing of the GAN.
  assert graph['inception'] <= {'weights'} and graph['classifier'] <= {
      'weights', 'shapes_dataset', 'digits_dataset'}
