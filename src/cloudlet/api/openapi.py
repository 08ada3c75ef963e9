"""Write the API's OpenAPI schema: ``python -m cloudlet.api.openapi docs/openapi.json``.

The schema is checked in; a test fails when the served one differs from it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cloudlet.api.app import openapi_schema

REGENERATE = "python -m cloudlet.api.openapi docs/openapi.json"


def schema_text() -> str:
    return json.dumps(openapi_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write(f"usage: {REGENERATE}\n")
        return 2
    Path(argv[0]).write_text(schema_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
