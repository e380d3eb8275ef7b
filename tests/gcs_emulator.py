"""`python tests/gcs_emulator.py start ...`: gcp-storage-emulator with Cloud Storage's generation
preconditions, which it lacks.

Cloud Storage refuses a write, read or delete that names `ifGenerationMatch=G` with 412 Precondition Failed
unless the object's current generation is G (`0`: unless there is no such object). The output lease relies
on exactly that (common/lease.py), so the tests need it: this wraps the emulator's object handlers with that
documented check before its server module builds its routes, then runs the emulator's own command line.
"""

from __future__ import annotations

import importlib
import sys
from http import HTTPStatus

from gcp_storage_emulator.handlers import objects


def _current_generation(storage, bucket: str, name: str) -> str:
    try:
        return str(storage.get_file_obj(bucket, name).get("generation", ""))
    except Exception:  # NotFound
        return "0"


def _object_name(request) -> str:
    params = request.params
    if "object_id" in params:
        return params["object_id"]
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data if isinstance(request.data, dict) else {}
    return (data.get("meta") or {}).get("name", "")


def with_preconditions(handler):
    def checked(request, response, storage, *args, **kwargs):
        wanted = request.query.get("ifGenerationMatch")
        if wanted:
            current = _current_generation(storage, request.params["bucket_name"], _object_name(request))
            if current != wanted[0]:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "Precondition Failed"}})
                return None
        return handler(request, response, storage, *args, **kwargs)

    return checked


for _name in ("insert", "delete", "download", "get"):
    setattr(objects, _name, with_preconditions(getattr(objects, _name)))

if __name__ == "__main__":
    # Imported only now, so its server module builds its routes from the wrapped handlers.
    sys.exit(importlib.import_module("gcp_storage_emulator.__main__").main())
