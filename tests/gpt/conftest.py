"""A tiny random GPT-2 built and saved with ``transformers`` (no downloads), shared by the GPT tests."""

import pytest
import torch

# Four words more than needed, so the word-level tokenizer's ids stay below the tiny model's vocabulary.
SENTENCES = [
    "every effort moves you forward",
    "the cat sat on the mat",
    "attention is all you need",
    "a small model for tests",
]
VOCAB_SIZE = 96


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """(directory, GPT2LMHeadModel in eval mode): config.json + model.safetensors + tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel

    directory = tmp_path_factory.mktemp("tiny_gpt2")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=64,
        n_embd=48,
        n_layer=2,
        n_head=4,
        # A wider init than GPT-2's 0.02 spreads the logits, so greedy choices are not near-ties that
        # float32 rounding could flip between two correct implementations.
        initializer_range=0.2,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(directory)  # safetensors by default

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    assert tokenizer.get_vocab_size() <= VOCAB_SIZE
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory, model


@pytest.fixture(scope="session")
def prompt_ids():
    """A batch of 3 prompts of 6 tokens inside the tiny vocabulary."""
    return torch.randint(0, VOCAB_SIZE, (3, 6), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def few_blocks(monkeypatch):
    """Fail a test that builds more than 64 transformer blocks (on any device, meta included): a config
    that claims a billion layers must be refused before building, not found out by running out of memory."""
    from attnlab.gpt.model import TransformerBlock

    built = []
    original = TransformerBlock.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        if len(built) > 64:
            raise AssertionError("more than 64 transformer blocks built: the config was not checked first")
        original(self, *args, **kwargs)

    monkeypatch.setattr(TransformerBlock, "__init__", counting_init)
    return built


@pytest.fixture
def hf_copy(tiny_hf, tmp_path):
    """A fresh copy of the tiny checkpoint's config.json and model.safetensors in ``tmp_path / "ckpt"``,
    for a test to damage."""
    source, _ = tiny_hf
    target = tmp_path / "ckpt"
    target.mkdir()
    for name in ("config.json", "model.safetensors"):
        (target / name).write_bytes((source / name).read_bytes())
    return target
