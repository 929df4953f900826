"""Expose ``twistd live``; the module is named as a string so the scan stays cheap."""

from twisted.application.service import ServiceMaker

live = ServiceMaker(
    "livetx",
    "livetx.tap",
    "Real-time voice conversation server (AstrBot Live API)",
    "live",
)
