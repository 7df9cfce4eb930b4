"""URL passwords hidden wherever a job writes or prints text (runs.py's logging and params, the
outbox's messages)."""
from __future__ import annotations

import re

# scheme://user:password@host, also as Hydra writes overrides (scheme\://user\:password@host).
_PASSWORD_IN_URL = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*\\?://[^/\s:@\\]+\\?:)(?P<secret>[^@\s/]+)(?P<tail>@)")


def mask_secrets(text: str) -> str:
    """Hide the password of any URL such as postgresql://user:secret@host/db."""
    return _PASSWORD_IN_URL.sub(r"\g<head>***\g<tail>", str(text))
