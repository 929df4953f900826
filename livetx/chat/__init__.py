"""Unified chat mode: text turns stored in sessions, streamed to every subscriber.

Like :mod:`livetx.live`, this package has no network code. A turn is run by
:class:`~livetx.chat.service.ChatService` for any caller — a socket in chat
mode or ``POST /api/v1/chat`` — and its events go to everyone bound to the
session.
"""
