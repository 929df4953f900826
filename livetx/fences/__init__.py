"""Every override of a library's internals, one module per library.

Each module here leans on something its library does not promise to keep:
a private method, a class attribute the library walks, the body of a
public method. ``tests/test_fences.py`` checks each of those still has the
shape relied on, so an upgrade fails there, loudly, rather than in a
socket. ``setup.cfg`` caps these libraries below their next major version.
"""
