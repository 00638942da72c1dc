"""The user's README and the generated benchmark README."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_a_users_document_of_at_most_15000_characters():
    text = (ROOT / "README.md").read_text()
    assert len(text) <= 15_000, len(text)
    first_screen = "\n".join(text.splitlines()[:40])
    assert "sm12x demo" in first_screen and "pytest" in first_screen, "the two commands belong on the first screen"


def test_benchmark_tables_regenerate_from_the_result_files():
    """benchmark/README.md and the README's headline table are what make_readme.py writes from the
    JSONs it names (no hand-edited numbers), and every file they name exists."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmark" / "make_readme.py"), "--check"], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    sys.path.insert(0, str(ROOT / "benchmark"))
    import make_readme
    cited = {v for v in make_readme.SOURCES.values() if (ROOT / "benchmark" / "results" / v).exists()}
    assert {"budget-sm120-sm121.json"} <= cited


def test_result_links_resolve():
    import re
    for doc in (ROOT / "README.md", ROOT / "benchmark" / "README.md"):
        for target in re.findall(r"\]\(([^)#]+)\)", doc.read_text()):
            if target.startswith("http"):
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links {target}, which does not exist"
