"""Put MathJax inside the documentation site at build time, so formulas render offline.

The site's pages load ``vendor/mathjax/tex-mml-chtml.js`` from the site itself (mkdocs.yml),
never from a CDN: a reader on a machine without network, or the site served from a plain file
server, still sees typeset math. This script fetches the pinned MathJax release from the npm
registry (``npm pack``; without npm, the same tarball over HTTPS from the registry), checks its
sha512 against the pinned integrity, and unpacks the parts a browser needs into
``docs/vendor/mathjax/`` (git-ignored, ~10 MB). A matching copy already there is reused, so
repeated builds are offline.

    python scripts/vendor_mathjax.py          # called by scripts/docs.sh before mkdocs
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

VERSION = "3.2.2"
# `npm view mathjax@3.2.2 dist.integrity`
INTEGRITY = ("sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO"
             "+geW0OhGw==")
# The combined TeX/MathML -> CommonHTML component plus what it loads on demand (TeX extensions,
# fonts, the context menu and its accessibility parts).
KEEP = ("tex-mml-chtml.js", "input/", "output/", "ui/", "a11y/", "sre/")

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "docs" / "vendor" / "mathjax"
STAMP = DEST / "VERSION"


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _download() -> bytes:
    if shutil.which("npm"):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["npm", "pack", f"mathjax@{VERSION}", "--silent"], cwd=tmp, check=True,
                           stdout=subprocess.DEVNULL)
            return (Path(tmp) / f"mathjax-{VERSION}.tgz").read_bytes()
    registry = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org/").rstrip("/")
    with urllib.request.urlopen(f"{registry}/mathjax/-/mathjax-{VERSION}.tgz", timeout=120) as r:
        return r.read()


def main() -> int:
    if STAMP.is_file() and STAMP.read_text().strip() == VERSION \
            and (DEST / "tex-mml-chtml.js").is_file():
        return 0
    print(f"vendor_mathjax: fetching mathjax@{VERSION} from the npm registry", file=sys.stderr)
    data = _download()
    got = _integrity(data)
    if got != INTEGRITY:
        print(f"vendor_mathjax: integrity mismatch for mathjax@{VERSION}:\n  got  {got}\n"
              f"  want {INTEGRITY}", file=sys.stderr)
        return 1
    if DEST.exists():
        shutil.rmtree(DEST)
    DEST.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            if name == "package/LICENSE":
                rel = "LICENSE"
            elif name.startswith("package/es5/") and name[len("package/es5/"):].startswith(KEEP):
                rel = name[len("package/es5/"):]
            else:
                continue
            if not member.isfile() or ".." in Path(rel).parts:
                continue
            out = DEST / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())
    STAMP.write_text(VERSION + "\n")
    print(f"vendor_mathjax: MathJax {VERSION} in {DEST.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
