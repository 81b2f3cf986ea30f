"""The conda environment and the pip pins must describe the same environment."""

import re
from pathlib import Path

import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]


def pip_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    pins = {}
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", req)
        assert m, f"pyproject.toml: {req!r} is not pinned exactly (NAME==VERSION)"
        pins[m[1].lower()] = m[2]
    return pins


def conda_pins() -> dict[str, str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = {}
    for req in pip_section:
        if req.startswith("-e"):
            continue
        name, _, version = req.partition("==")
        pins[name.strip().lower()] = version.strip()
    return pins


def test_environment_yml_matches_pip_pins():
    assert conda_pins() == pip_pins()


def test_torch_pins_are_the_design_cards():
    pins = pip_pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert pins["jupyter-book"].startswith("1.")


def test_installed_versions_match_pins():
    from importlib.metadata import version

    for name, pinned in pip_pins().items():
        assert version(name) == pinned, f"{name}: installed {version(name)}, pinned {pinned}; run make setup"
