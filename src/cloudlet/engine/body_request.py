"""A VM document that came over the network, checked as the create request it is.

The API takes the spec file's model (``VMDocument``), so a body is validated exactly as
a file is. What differs is trust: a file's paths are the user's own, a body's would be
paths on the server's host. Fields that name host files (an ISO, a user-data file, SSH
key files) are refused, naming the field; inline text does the same job.
"""

from __future__ import annotations

from cloudlet.engine.apply import check_host
from cloudlet.engine.engine import Engine
from cloudlet.engine.local_files import is_key_line
from cloudlet.errors import InvalidInput
from cloudlet.spec.document import VMBody, VMDocument, VMEntry, check_entry

SOURCE = "request body"


def _refuse(field: str, instead: str) -> InvalidInput:
    return InvalidInput(
        f"{SOURCE}: {field}: names a file on the server's host, which a client cannot give",
        hint=instead,
    )


def body_request(engine: Engine, doc: VMDocument) -> VMBody:
    """Check a body as a spec file is checked (host paths refused): the create request."""
    spec = doc.spec
    if spec.iso is not None:
        raise _refuse("spec.iso", "import the ISO as an image on the host, then name the image")
    if spec.user_data_file is not None:
        raise _refuse("spec.user_data_file", "send the #cloud-config inline as spec.user_data")
    for i, key in enumerate(spec.access.ssh_keys):
        if not is_key_line(key):
            raise _refuse(
                f"spec.access.ssh_keys.{i}",
                "send the public key itself, such as 'ssh-ed25519 AAAA...'",
            )
    entry = VMEntry(doc, SOURCE)
    check_entry(entry)
    check_host(engine, entry)
    return spec
