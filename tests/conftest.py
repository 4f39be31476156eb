import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """The 40-utterance demo corpus's audio, generated once per test session."""
    from mer.data.corpora import prepare

    root = tmp_path_factory.mktemp("demo")
    prepare("demo", root, size=40)
    return root
