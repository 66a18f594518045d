"""The documentation's relative links point at files of the repository (a clone has no ../shared)."""

import json
import os
import re

from tests.conftest import ROOT


def test_readme_and_design_links_exist():
    for doc in ("README.md", os.path.join("docs", "DESIGN.md")):
        text = open(os.path.join(ROOT, doc)).read()
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if "://" in target:
                continue
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), target))
            assert path.startswith(ROOT + os.sep) and os.path.exists(path), f"{doc} links {target}"
    assert "docs/DESIGN.md" in open(os.path.join(ROOT, "README.md")).read()


def readme_block(after, lang="python"):
    """The first ```lang block of README.md after the heading `after`."""
    text = open(os.path.join(ROOT, "README.md")).read()
    return re.search(rf"```{lang}\n(.*?)```", text[text.index(after):], re.S).group(1)


def test_readme_api_example_runs(synthetic_dataset, tmp_path, capsys):
    """The README's Python API example, as printed there, on the test's synthetic dataset."""
    code = readme_block("### Your own model")
    assert "data/synthetic" in code and "attacks/tiny" in code
    code = code.replace("data/synthetic", synthetic_dataset).replace("attacks/tiny", str(tmp_path / "tiny"))
    exec(compile(code, "README.md", "exec"), {})
    clean, fna = map(float, capsys.readouterr().out.strip().splitlines()[-1].split())
    results = json.load(open(tmp_path / "tiny" / "results.json"))
    assert (clean, fna) == (results["clean"]["mAP"], results["attacks"]["FNA"]["mean"]["mAP"])
    assert set(results["attacks"]) == {"FNA", "SMA"} and results["config"]["model"] == "TinyReid"


def test_readme_model_factory_file_works(synthetic_dataset, tmp_path, monkeypatch):
    import gen_adv
    code = readme_block("From the command line, a module")
    (tmp_path / "my_models.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    results = gen_adv.main([synthetic_dataset, "--model-factory", "my_models:resnet18_features", "--height", "64",
                            "--width", "32", "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "o")])
    assert results["config"]["model"] == "Sequential" and 0 < results["clean"]["mAP"] <= 1
