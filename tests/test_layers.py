"""The layering of docs/architecture.md is enforced: import-linter's contracts in pyproject.toml
hold, cover every package, and break when an upward import or a cycle is added."""
import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONTRACTS = {c["id"]: c for c in PYPROJECT["tool"]["importlinter"]["contracts"]}
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    assert LINT, "lint-imports (import-linter, a dev dependency) is not installed"
    return subprocess.run([LINT, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300)


def _copy_packages(tmp_path: Path) -> Path:
    for name in ("clip4clip", "data", "adapters"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _layer_modules(contract) -> list:
    return [m.strip() for layer in contract["layers"] for m in layer.split("|")]


def test_the_contracts_hold():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_layers_cover_every_package_and_module():
    listed = set(_layer_modules(CONTRACTS["layers"]))
    children = {f"clip4clip.{p.stem if p.is_file() else p.name}" for p in (REPO / "clip4clip").iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert children - listed == set(), "clip4clip modules that no layer names"
    assert {"data", "adapters"} <= listed
    # The packages with inner layers are exhaustive (import-linter also checks this itself).
    assert CONTRACTS["weights"]["exhaustive"] and CONTRACTS["data"]["exhaustive"]


def test_the_layers_are_the_ones_docs_architecture_lists():
    doc = (REPO / "docs" / "architecture.md").read_text()
    table = re.search(r"<!-- layers -->(.*?)<!-- /layers -->", doc, re.S).group(1)
    rows = [line for line in table.splitlines() if line.startswith("|") and "`" in line.split("|")[1]]
    documented = [[m.strip("` ") for m in row.split("|")[1].split(",")] for row in rows]
    contract = [[m.strip() for m in layer.split("|")] for layer in CONTRACTS["layers"]["layers"]]
    assert documented == contract


def test_an_upward_import_breaks_the_contract(tmp_path):
    root = _copy_packages(tmp_path)
    # The model layer reaching up into the engine: what the contract exists to stop. A
    # function-level import, which only a whole-source scan sees.
    model = root / "clip4clip" / "model.py"
    model.write_text(model.read_text() + "\n\ndef _upward():\n    from .engine import trainer  # noqa\n")
    result = _lint(root)
    assert result.returncode != 0
    assert "clip4clip.model -> clip4clip.engine.trainer" in result.stdout
    assert "Packages are layers" in result.stdout and "BROKEN" in result.stdout


def test_a_cycle_and_hydra_in_model_code_break_their_contracts(tmp_path):
    root = _copy_packages(tmp_path)
    files = root / "clip4clip" / "weights" / "files.py"
    files.write_text(files.read_text() + "\n\ndef _cycle():\n    from . import dispatch  # noqa\n")
    heads = root / "clip4clip" / "heads" / "base.py"
    heads.write_text(heads.read_text() + "\n\ndef _hydra():\n    import omegaconf  # noqa\n")
    result = _lint(root)
    assert result.returncode != 0
    out = result.stdout
    assert re.search(r"Inside clip4clip.weights.*BROKEN", out) and "clip4clip.weights.files -> clip4clip.weights.dispatch" in out
    assert re.search(r"No import cycles.*BROKEN", out)
    assert re.search(r"no Hydra, no OmegaConf BROKEN", out) and "clip4clip.heads.base -> omegaconf" in out


@pytest.mark.parametrize("package", ["clip4clip/model.py", "clip4clip/heads", "clip4clip/clip", "adapters",
                                     "clip4clip/loss.py"])
def test_model_code_has_no_distributed_calls(package):
    # import-linter forbids only whole external packages (torch is everywhere), so this one
    # rule is read off the source: model code never imports torch.distributed.
    path = REPO / package
    for file in ([path] if path.is_file() else sorted(path.rglob("*.py"))):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("torch.distributed") for n in names), f"{file} imports torch.distributed"
