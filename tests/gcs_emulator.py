"""`python tests/gcs_emulator.py start ...`: gcp-storage-emulator with Cloud Storage's generation
preconditions, which it lacks; `python tests/gcs_emulator.py proxy ...`: the TLS proxy TensorFlow needs to
reach it (see tests/test_gcs.py), as a program of its own for a host of its own (tests/test_multihost.py).

Cloud Storage refuses a write, read or delete that names `ifGenerationMatch=G` with 412 Precondition Failed
unless the object's current generation is G (`0`: unless there is no such object). The output lease relies
on exactly that (common/lease.py), so the tests need it: this wraps the emulator's object handlers with that
documented check before its server module builds its routes, then runs the emulator's own command line.
"""

from __future__ import annotations

import importlib
import sys
import urllib.parse
from http import HTTPStatus

from gcp_storage_emulator import storage
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


def _object_key(path: str) -> str:
    """The emulator's store keys content by `bucket/name` as a path, refusing names with `..` parts and folding
    `.` and empty ones; Cloud Storage names are not paths (`in/../x.avi` is an object of its own, which
    tests/test_gcs_names.py needs). Key it by the bucket and the whole name quoted: one key per name, no
    part that climbs, on disk or in memory."""
    bucket, slash, name = path.strip("/").partition("/")
    return bucket + slash + urllib.parse.quote(name, safe="").replace(".", "%2E") if name else bucket


storage._FileStore._norm = staticmethod(_object_key)
_make_object_resource = objects._make_object_resource


def _with_quoted_links(base_url, bucket_name, object_name, *args, **kwargs):
    """An object's resource with its name percent-encoded in `mediaLink` and `selfLink`, as Cloud Storage
    writes them (the emulator writes the name as it is, so `a%09b` comes back as `a<TAB>b` when read)."""
    obj = _make_object_resource(base_url, bucket_name, object_name, *args, **kwargs)
    raw, quoted = f"/o/{object_name}", f"/o/{urllib.parse.quote(object_name, safe='')}"
    obj["mediaLink"] = obj["mediaLink"].replace(raw + "?", quoted + "?", 1)
    obj["selfLink"] = obj["selfLink"][: -len(raw)] + quoted
    return obj


objects._make_object_resource = _with_quoted_links


def serve_proxy(argv: list[str]) -> None:
    """`proxy --listen ADDRESS:PORT --emulator HOST:PORT --certificate PEM --key PEM`: tests/test_gcs.py's proxy
    (the two Cloud Storage hosts to the emulator, every other host refused), listening where other hosts reach
    it rather than on the loopback of the test's own process."""
    import argparse
    import http.server
    import ssl

    from test_gcs import _ProxyHandler, _StorageProxy

    class ListeningProxy(_StorageProxy):
        def __init__(self, address: tuple[str, int], emulator: str, tls: ssl.SSLContext):
            self.emulator, self.tls = emulator, tls
            http.server.ThreadingHTTPServer.__init__(self, address, _ProxyHandler)

    parser = argparse.ArgumentParser(prog="gcs_emulator.py proxy")
    parser.add_argument("--listen", required=True, metavar="ADDRESS:PORT")
    parser.add_argument("--emulator", required=True, metavar="HOST:PORT")
    parser.add_argument("--certificate", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(args.certificate, args.key)
    address, _, port = args.listen.rpartition(":")
    ListeningProxy((address, int(port)), args.emulator, tls).serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["proxy"]:
        serve_proxy(sys.argv[2:])
    else:
        # Imported only now, so its server module builds its routes from the wrapped handlers.
        sys.exit(importlib.import_module("gcp_storage_emulator.__main__").main())
