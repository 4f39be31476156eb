import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """The 40-utterance demo corpus's audio, generated once per test session."""
    from mer.data.corpora import prepare

    root = tmp_path_factory.mktemp("demo")
    prepare("demo", root, size=40)
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine (CI) the
    threads' spinning makes tests several times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
