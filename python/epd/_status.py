"""Status codes and the one exception type of the epd package.

`Status` mirrors `epd_status_t` (include/epd/types.h) number for number;
`EpdError` carries a Status and the message the library or the daemon gave
(epd_client_last_error / epd_group_last_error). Plain data: thread-safe.
"""
from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """epd_status_t: OK is 0, errors are negative; numbers are never reused."""

    OK = 0
    INVALID_ARGUMENT = -1
    INVALID_SPEC = -2
    EXPERT_ID_OUT_OF_RANGE = -3
    CAPACITY_EXCEEDED = -4
    FP8_ALIGNMENT = -5
    UNSUPPORTED = -6
    BAD_SLOT = -7
    NO_DISPATCH = -8
    SPEC_MISMATCH = -9
    DUPLICATE_RANK = -10
    STALE_GENERATION = -11
    UNKNOWN_GROUP = -12
    VERSION_MISMATCH = -13
    PROTOCOL = -14
    TIMEOUT = -15
    PEER_LOST = -16
    DAEMON_LOST = -17
    PERMISSION = -18
    NO_MEMORY = -19
    SYSTEM = -20
    CUDA = -21
    GPU_UNAVAILABLE = -22
    SLOT_BUSY = -23
    SHUTTING_DOWN = -24
    NOT_JOINED = -25
    BAD_WEIGHT_MODE = -26
    RDMA = -27
    INTERNAL = -28
    DEVICE_FAULT = -29
    GROUP_CLOSED = -30
    NOT_OWNER = -31
    QUOTA_EXCEEDED = -32

    @classmethod
    def of(cls, code: int) -> "Status | int":
        """The Status for `code`, or the plain int for a number this package does not know yet."""
        try:
            return cls(code)
        except ValueError:
            return code


class EpdError(RuntimeError):
    """Every failure of the epd package: `.status` (a Status) and `.message`.

    The message is the library's or the daemon's, naming the offending value
    (e.g. "topk_ids[17][3] = 300 is outside [-1, 256)")."""

    def __init__(self, status: "Status | int", message: str):
        self.status = Status.of(int(status))
        self.message = message
        name = f"EPD_ERR_{self.status.name}" if isinstance(self.status, Status) else f"epd status {int(status)}"
        text = message if message.startswith(name) else f"{name}: {message}"  # library messages often lead with it
        super().__init__(f"{text} ({int(status)})")

    def __reduce__(self):
        return (EpdError, (int(self.status), self.message))
