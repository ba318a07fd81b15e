"""The install as users do it: dependency floors that hold, torch pinned only by constraints.txt (tox,
CI and the README's venv recipe), and tox's two commands sharing one environment."""

from __future__ import annotations

import configparser
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent

# The oldest release with an API the code calls (the other floors were checked by installing them).
API_FLOORS = {
    "torch": ("2.3", "torch.amp.GradScaler(device) in leader/teacher.py"),
    "transformers": ("4.56", "from_pretrained(dtype=...) in leader/teacher.py"),
    "peft": ("0.21", "LoRA on some layers only (layers_to_transform) of a decoder loaded with AutoModel, whose layer keys have no prefix"),
    "gguf": ("0.10", "transformers' minimum for from_pretrained(gguf_file=...)"),
}


def requirements(extra: str | None = None) -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return {req.name: req for req in map(Requirement, listed)}


def tox_ini() -> configparser.ConfigParser:
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "tox.ini")
    return config


def test_library_dependencies_have_floors_and_no_exact_pins():
    pinned = [str(req) for req in requirements().values() if any(spec.operator in ("==", "===") for spec in req.specifier)]
    assert pinned == [], "pin exact versions in constraints.txt, not in the library's dependencies"
    assert all(any(spec.operator == ">=" for spec in req.specifier) for req in requirements().values())


def test_floors_cover_the_apis_the_code_calls():
    floors = {name: min(Version(s.version) for s in req.specifier if s.operator == ">=") for name, req in requirements().items()}
    too_low = {name: f"needs >= {version}: {why}" for name, (version, why) in API_FLOORS.items() if floors[name] < Version(version)}
    assert too_low == {}


def test_test_only_packages_are_test_extras():
    assert {"pytest", "scikit-learn", "pylatexenc"} <= set(requirements("test"))
    assert not {"scikit-learn", "pylatexenc", "datamol"} & set(requirements())


def test_torch_is_pinned_by_the_constraints_that_tox_and_the_readme_use():
    lines = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert lines == ["torch==2.13.0"]
    set_env = dict(line.split("=", 1) for line in tox_ini()["testenv"]["set_env"].strip().splitlines())
    assert {k.strip(): v.strip() for k, v in set_env.items()}["PIP_CONSTRAINT"] == "{tox_root}/constraints.txt"
    assert "pip install -c constraints.txt ." in (ROOT / "README.md").read_text()


def test_no_two_tox_envs_set_up_one_env_dir():
    """tox rebuilds an env dir that another env name set up: only one env may install into each."""
    config = tox_ini()
    base = config["testenv"]
    envs = {name: section for name, section in config.items() if name.startswith("testenv:")}
    envs.setdefault(f"testenv:{config['tox']['env_list'].strip()}", base)
    installing = {name: s.get("env_dir", base["env_dir"]) for name, s in envs.items() if s.get("skip_install", "false") != "true"}
    skipping = {name: s.get("env_dir", base["env_dir"]) for name, s in envs.items() if s.get("skip_install", "false") == "true"}
    assert len(set(installing.values())) == len(installing)
    assert not set(skipping.values()) & set(installing.values())


def test_the_main_job_runs_in_the_test_environment():
    config = tox_ini()
    synth, test_env = config["testenv:synth"], config["tox"]["env_list"].strip()
    assert synth["skip_install"] == "true" and "deps" not in synth
    setup, job = synth["commands"].strip().splitlines()
    assert setup == f"tox run -c {{tox_root}} --workdir {{work_dir}} -e {test_env} --notest"
    assert job.startswith("{[testenv]env_dir}/bin/bench run --models all --dataset synth")
