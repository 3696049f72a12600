"""Generate the `crm` Python package (messages, gRPC stubs, type stubs) from protos/crm.

Generated code is built at setup (make setup, image build) into protos/gen/, which git ignores:
there is one copy, it is never edited by hand and it can never drift from the .proto files.
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
OUT = HERE / "gen"


def main() -> int:
    sources = sorted(str(p.relative_to(HERE)) for p in (HERE / "crm").rglob("*.proto"))
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{HERE}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--pyi_out={OUT}",
        *sources,
    ]
    code = protoc.main(args)
    if code != 0:
        print("protoc failed", file=sys.stderr)
        return int(code)
    for directory in [OUT / "crm", *(p for p in (OUT / "crm").rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    (OUT / "crm" / "py.typed").touch()
    print(f"generated {len(sources)} proto files into {OUT.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
