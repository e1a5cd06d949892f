import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


class Collector:
    """A callable sink that keeps every byte it is given, and the chunks."""

    def __init__(self):
        self.chunks = []

    def __call__(self, view):
        assert view.readonly
        self.chunks.append(bytes(view))

    @property
    def data(self):
        return b"".join(self.chunks)


@pytest.fixture
def collector():
    return Collector()


@pytest.fixture
def devnull():
    fd = os.open(os.devnull, os.O_WRONLY)
    yield fd
    os.close(fd)
