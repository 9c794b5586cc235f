"""The package walls: generation_torch and segmentation_tf never import each other (at module level or
inside a function), and the generator's flag-to-config code loads without PyTorch."""

import ast

import pytest

from .conftest import ROOT, assert_runs_without


def imported_packages(package: str) -> dict[str, set[str]]:
    """file -> the top-level packages it imports anywhere (module level or inside functions)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package,forbidden", [("generation_torch", "segmentation_tf"),
                                               ("segmentation_tf", "generation_torch")])
def test_the_two_trainers_never_import_each_other(package, forbidden):
    offenders = [f for f, names in imported_packages(package).items() if forbidden in names]
    assert not offenders, f"{package} imports {forbidden} in {offenders}"


def test_generator_flags_become_configs_without_torch():
    assert_runs_without("from generation_torch import cli_args\n"
                        "stages = cli_args.stages_from_args(cli_args.parser().parse_args(['--steps', '3']))\n"
                        "assert stages.vae.train.steps == stages.diffusion.train.steps == 3")
