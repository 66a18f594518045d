"""The documentation: README.md is a front page that links every page of docs/; relative links point
at files of the repository (a clone has no ../shared); the examples printed in docs/ run as printed."""

import glob
import json
import os
import re

from tests.conftest import ROOT

README_MAX_LINES = 250


def doc_pages():
    """Every docs/*.md page, as a path relative to the repository root."""
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def relative_links(doc):
    """The relative link targets of `doc` (fragments dropped), as normalised absolute paths."""
    text = open(os.path.join(ROOT, doc)).read()
    return [os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), target))
            for target in re.findall(r"\]\(([^)#]+)\)", text) if "://" not in target]


def test_readme_and_docs_links_exist():
    for doc in ["README.md"] + doc_pages():
        for path in relative_links(doc):
            assert path.startswith(ROOT + os.sep) and os.path.exists(path), f"{doc} links {path}"
    assert "docs/DESIGN.md" in open(os.path.join(ROOT, "README.md")).read()


def test_readme_links_every_docs_page():
    linked = set(relative_links("README.md"))
    assert os.path.join("docs", "DESIGN.md") in doc_pages()
    for page in doc_pages() + [os.path.join("benchmarks", "RESULTS.md")]:
        assert os.path.join(ROOT, page) in linked, f"README.md does not link {page}"


def test_readme_is_a_front_page():
    lines = open(os.path.join(ROOT, "README.md")).read().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


def doc_block(doc, after, lang="python"):
    """The first ```lang block of `doc` (relative to the repository root) after the text `after`."""
    text = open(os.path.join(ROOT, doc)).read()
    return re.search(rf"```{lang}\n(.*?)```", text[text.index(after):], re.S).group(1)


def test_your_model_api_example_runs(synthetic_dataset, tmp_path, capsys):
    """docs/your-model.md's Python API example, as printed there, on the test's synthetic dataset."""
    code = doc_block("docs/your-model.md", "## From Python")
    assert "data/synthetic" in code and "attacks/tiny" in code
    code = code.replace("data/synthetic", synthetic_dataset).replace("attacks/tiny", str(tmp_path / "tiny"))
    exec(compile(code, "docs/your-model.md", "exec"), {})
    clean, fna = map(float, capsys.readouterr().out.strip().splitlines()[-1].split())
    results = json.load(open(tmp_path / "tiny" / "results.json"))
    assert (clean, fna) == (results["clean"]["mAP"], results["attacks"]["FNA"]["mean"]["mAP"])
    assert set(results["attacks"]) == {"FNA", "SMA"} and results["config"]["model"] == "TinyReid"


def test_your_model_factory_file_works(synthetic_dataset, tmp_path, monkeypatch):
    """docs/your-model.md's --model-factory module, as printed there, through gen_adv.main."""
    import gen_adv
    code = doc_block("docs/your-model.md", "From the command line, a module")
    (tmp_path / "my_models.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    results = gen_adv.main([synthetic_dataset, "--model-factory", "my_models:resnet18_features", "--height", "64",
                            "--width", "32", "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "o")])
    assert results["config"]["model"] == "Sequential" and 0 < results["clean"]["mAP"] <= 1
