"""Generate the key tables of docs/configuration.md from the config's schema.

python scripts/config_docs.py          # rewrite the tables in place
python scripts/config_docs.py --check  # exit 1 if the file is out of date
"""

import argparse
import sys

from dltips.config_docs import DOC, render

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    check = parser.parse_args().check
    text = DOC.read_text(encoding="utf-8")
    if render(text) == text:
        sys.exit(0)
    if check:
        sys.exit(f"{DOC} is out of date: run python scripts/config_docs.py")
    DOC.write_text(render(text), encoding="utf-8")
    print(f"wrote {DOC}")
