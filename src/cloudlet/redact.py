"""What may be written about a command: argv, QMP and agent messages without secrets.

The log records every host command, QEMU command line, QMP command and guest-agent
command. Whatever could carry a secret is replaced here before a line is made:
values of password-, passphrase-, secret- and token-like flags and ``name=value``
options, the data of QEMU ``secret`` objects, credentials in URLs, and payloads
(stdin, file contents, program output) which are only ever counted, never quoted.
Over-redaction is the safe side: a lost detail costs less than a leaked secret.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

REDACTED = "<redacted>"

# Parts of a flag or option name that mark its value as secret.
_SECRET_NAME = re.compile(
    r"pass(?:word|wd|phrase)?(?![a-z])|secret|token|api[-_]?key|private[-_]?key|credential"
    r"|^auth$|^key$",
    re.IGNORECASE,
)
# Flags whose value is secret for one program only (a short flag means other things
# elsewhere: ssh's -p is a port, ssh-keygen's -N a passphrase).
_PROGRAM_FLAGS: dict[str, frozenset[str]] = {
    "ssh-keygen": frozenset({"-N", "-P"}),
    "sshpass": frozenset({"-p"}),
    "openssl": frozenset({"-k", "-K"}),
    "cryptsetup": frozenset({"-d"}),
}
# The name of a name=value inside an option string (QEMU's comma lists, KEY=value words).
_OPTION_NAME = re.compile(r"(?:^|(?<=[,\s]))(?P<name>[A-Za-z_][\w.-]*)=")
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_SECRET_OBJECT = re.compile(r"\bsecret", re.IGNORECASE)
_HMP_PASSWORD = re.compile(r"\s*(?P<command>set_password|change\s+vnc)\b", re.IGNORECASE)

# Payload fields of QMP and agent messages: counted, never written.
_PAYLOADS = frozenset({"input-data", "buf-b64", "out-data", "err-data"})
MAX_STRING = 200
MAX_ITEMS = 24
MAX_DEPTH = 6
MAX_SUMMARY = 400


def secret_name(name: str) -> bool:
    """Whether an option or flag called ``name`` (dashes allowed) carries a secret."""
    return bool(_SECRET_NAME.search(name.lstrip("-")))


def redact_text(text: str) -> str:
    """One string with secret ``name=value`` options and URL credentials hidden."""
    hmp = _HMP_PASSWORD.match(text)
    if hmp:
        return f"{hmp.group('command')} {REDACTED}"
    text = _URL_CREDENTIALS.sub(rf"\g<scheme>{REDACTED}@", text)
    if "=" not in text:
        return text
    secret_object = bool(_SECRET_OBJECT.search(text))
    out: list[str] = []
    pos = 0
    for match in _OPTION_NAME.finditer(text):
        name = match.group("name")
        if match.start() < pos or not (
            secret_name(name) or (secret_object and name.lower() == "data")
        ):
            continue
        out += [text[pos : match.end()], REDACTED]
        pos = _value_end(text, match.end())
    return "".join(out) + text[pos:]


def _value_end(text: str, start: int) -> int:
    """Where an option value that starts at ``start`` ends: at the next comma that QEMU
    does not read as an escaped one (",,"), else at the end (spaces included: a value
    cut short would leak its tail)."""
    index = start
    while True:
        index = text.find(",", index)
        if index < 0:
            return len(text)
        if text.startswith(",,", index):
            index += 2
            continue
        return index


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the value of every secret flag (``--password X``, ``--token=X``,
    ``-N X`` for ssh-keygen) and every secret option hidden."""
    program = os.path.basename(argv[0]) if argv else ""
    flags = _PROGRAM_FLAGS.get(program, frozenset())
    out: list[str] = []
    hide_next = False
    for index, arg in enumerate(argv):
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if index > 0 and arg.startswith("-") and arg not in ("-", "--"):
            name, equals, _ = arg.partition("=")
            if name in flags or secret_name(name):
                out.append(f"{name}={REDACTED}" if equals else arg)
                hide_next = not equals
                continue
        out.append(redact_text(arg))
    return out


def command_line(argv: Sequence[str]) -> str:
    """A redacted argv as one shell-quoted string (for reading, never for running)."""
    return shlex.join(redact_argv(argv))


def _payload_size(value: object) -> str:
    if isinstance(value, str):
        return f"<{len(value) * 3 // 4 - value[-2:].count('=')} bytes>"  # base64
    return "<payload>"


def _clip(text: str) -> str:
    text = redact_text(text)
    if len(text) > MAX_STRING:
        return f"{text[:MAX_STRING]}...(+{len(text) - MAX_STRING})"
    return text


def redact_value(value: Any, depth: int = 0) -> Any:
    """A QMP or agent message (arguments or reply) fit for the log: secrets and payloads
    hidden, long strings and lists cut, depth bounded."""
    if depth > MAX_DEPTH:
        return "..."
    if isinstance(value, Mapping):
        return _redact_mapping(value, depth)
    if isinstance(value, list | tuple):
        items = [redact_value(v, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(f"...(+{len(value) - MAX_ITEMS} more)")
        return items
    if isinstance(value, str):
        return _clip(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return _clip(str(value))


def _redact_mapping(value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
    qom_type = value.get("qom-type")
    secret_object = isinstance(qom_type, str) and bool(_SECRET_OBJECT.search(qom_type))
    program = value.get("path")
    arg = value.get("arg")
    exec_argv: list[str] | None = None
    if isinstance(program, str) and isinstance(arg, list) and all(isinstance(a, str) for a in arg):
        exec_argv = redact_argv([program, *arg])  # guest-exec: a program and its arguments
    out: dict[str, Any] = {}
    for count, (raw_key, item) in enumerate(value.items()):
        key = str(raw_key)
        if count >= MAX_ITEMS:
            out["..."] = f"+{len(value) - MAX_ITEMS} more"
            break
        if key in _PAYLOADS:
            out[key] = _payload_size(item)
        elif secret_name(key) or (secret_object and key == "data"):
            out[key] = REDACTED
        elif exec_argv is not None and key == "arg":
            out[key] = [_clip(a) for a in exec_argv[1:MAX_ITEMS]]
        elif key == "command-line" and isinstance(item, str):
            out[key] = _clip(item)
        else:
            out[key] = redact_value(item, depth + 1)
    return out


def summary(value: Any) -> str:
    """``redact_value`` as compact JSON, at most a few hundred characters."""
    text = json.dumps(redact_value(value), separators=(",", ":"), ensure_ascii=False, default=str)
    if len(text) > MAX_SUMMARY:
        return f"{text[:MAX_SUMMARY]}...(+{len(text) - MAX_SUMMARY})"
    return text
