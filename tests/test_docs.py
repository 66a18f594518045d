"""The documentation's relative links point at files of the repository (a clone has no ../shared)."""

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
