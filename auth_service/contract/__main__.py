"""`python -m auth_service.contract > docs/event-schema.json`: the contract's JSON Schema."""

import sys

from auth_service.contract import json_schema_text

sys.stdout.write(json_schema_text())
