"""CloudStack API errors as the simulator raises them: HTTP status = errorcode, a body with errorcode/errortext."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A CloudStack API error: HTTP status = errorcode, body with errorcode/cserrorcode/errortext."""

    # CSExceptionErrorCode values CloudStack puts in cserrorcode
    CS_INVALID_PARAMETER = 4350
    CS_CLOUD_RUNTIME = 4250
    CS_SERVER_API = 9999
    CS_INSUFFICIENT_CAPACITY = 4310
    CS_PERMISSION_DENIED = 4365

    def __init__(self, errorcode: int, errortext: str, cserrorcode: int = CS_INVALID_PARAMETER) -> None:
        super().__init__(errortext)
        self.errorcode = errorcode
        self.errortext = errortext
        self.cserrorcode = cserrorcode

    def body(self) -> dict[str, Any]:
        return {
            "uuidList": [],
            "errorcode": self.errorcode,
            "cserrorcode": self.cserrorcode,
            "errortext": self.errortext,
        }
