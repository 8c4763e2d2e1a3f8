"""Export the HTTP API's OpenAPI schema to ``schemas/openapi.json``.

Run ``python -m cancerseg_ray.serve.openapi schemas/openapi.json`` after
changing a route; a test checks that the committed file matches the code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OPENAPI_FILE = "openapi.json"


def openapi_text() -> str:
    """Render the OpenAPI schema of the ingress as indented JSON with a final newline."""
    from cancerseg_ray.serve.app import api

    return json.dumps(api.openapi(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the schema to the path given as the first argument (default ``schemas/openapi.json``)."""
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0] if argv else Path("schemas") / OPENAPI_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(openapi_text(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
