"""hpclm.data: tokenizers, input errors, the token cache, the built-in corpus and the batch sampler."""
import numpy as np
import pytest

from hpclm import data
from hpclm.config import DataConfig
from hpclm.data import (BatchSampler, ByteTokenizer, CharTokenizer, batch_offsets, builtin_corpus,
                        eval_offsets, get_batch, load_tokens, prepare, tokenizer_from_json)
from hpclm.errors import UserError


def entropy(counts):
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


@pytest.fixture
def cfg(tmp_path):
    """A DataConfig with its own cache dir, for a small file or the built-in corpus."""
    return DataConfig(cache_dir=str(tmp_path / "cache"), builtin_chars=20_000)


def write(tmp_path, content, name="corpus.txt"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


# ---------------------------------------------------------------------------------- tokenizers

def test_char_tokenizer_round_trip_on_unicode():
    text = "Grüße, 世界! naïve café — ✓ 🙂\n\tend"
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == len(set(text))
    assert tok.chars == "".join(sorted(set(text)))
    ids = tok.encode(text)
    assert ids.dtype == np.uint16 and len(ids) == len(text)
    assert tok.decode(ids) == text
    restored = tokenizer_from_json(tok.to_json())
    assert isinstance(restored, CharTokenizer) and restored.decode(ids) == text


def test_char_tokenizer_rejects_unknown_character():
    with pytest.raises(UserError, match="'z' at position 2 is not in the tokenizer's vocabulary"):
        CharTokenizer("abc").encode("abz")


def test_byte_tokenizer_round_trip_and_invalid_utf8():
    tok = ByteTokenizer()
    text = "héllo ✓"
    assert tok.vocab_size == 256
    assert tok.decode(tok.encode(text)) == text
    raw = bytes(range(256))
    assert tok.encode_bytes(raw).tolist() == list(range(256))
    assert tok.decode(np.array([0x68, 0xFF, 0x69])) == "h\ufffdi"  # errors="replace"
    assert isinstance(tokenizer_from_json(tok.to_json()), ByteTokenizer)


def test_byte_tokenizer_reads_arbitrary_file_bytes(tmp_path, cfg):
    raw = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes() + b"\xff\xfe\x00"
    cfg.path, cfg.tokenizer = write(tmp_path, raw, "blob.bin"), "byte"
    ds = load_tokens(cfg)
    assert np.concatenate([ds.train, ds.val]).tobytes() == np.frombuffer(raw, np.uint8).astype(np.uint16).tobytes()


# ------------------------------------------------------------------------------- input errors

def test_missing_file(tmp_path, cfg):
    cfg.path = str(tmp_path / "nope.txt")
    with pytest.raises(UserError, match="data file not found: .*nope.txt"):
        load_tokens(cfg)


def test_directory(tmp_path, cfg):
    cfg.path = str(tmp_path)
    with pytest.raises(UserError, match="is a directory"):
        load_tokens(cfg)


def test_empty_file(tmp_path, cfg):
    cfg.path = write(tmp_path, b"")
    with pytest.raises(UserError, match="data file is empty"):
        load_tokens(cfg)


def test_non_utf8_bytes_name_the_offset(tmp_path, cfg):
    cfg.path = write(tmp_path, b"hello \xff world")
    with pytest.raises(UserError, match="not UTF-8 text .*0xff at byte offset 6"):
        load_tokens(cfg)


@pytest.mark.parametrize("bad, offset", [(b"\x00", 4), (b"\x1b", 4), ("\u0085".encode(), 4)])
def test_control_characters_name_the_offset(tmp_path, cfg, bad, offset):
    cfg.path = write(tmp_path, b"ab\tc" + bad + b"\r\nmore text")
    with pytest.raises(UserError, match=f"control character .* at byte offset {offset}"):
        load_tokens(cfg)


def test_block_size_larger_than_a_split(tmp_path, cfg):
    cfg.path = write(tmp_path, "abcdefghij" * 10)   # 100 tokens: 90 train, 10 val
    assert len(load_tokens(cfg, block_size=9).val) == 10
    with pytest.raises(UserError, match="val split .* holds 10 tokens, but block_size 10 needs at least 11"):
        load_tokens(cfg, block_size=10)
    with pytest.raises(UserError, match="train split .* holds 90 tokens, but block_size 200"):
        load_tokens(cfg, block_size=200)


# -------------------------------------------------------------------------------- token cache

def test_cache_is_reused_and_memory_mapped(tmp_path, cfg, monkeypatch):
    cfg.path = write(tmp_path, "to be or not to be\n" * 50)
    first = load_tokens(cfg)
    npy, _ = prepare(cfg)
    mtime = npy.stat().st_mtime_ns
    monkeypatch.setattr(data, "_tokenize", lambda cfg: pytest.fail("tokenised again"))
    second = load_tokens(cfg)
    assert npy.stat().st_mtime_ns == mtime
    assert isinstance(second.train, np.memmap) and isinstance(second.val, np.memmap)
    assert second.train.dtype == np.uint16
    np.testing.assert_array_equal(first.train, second.train)
    assert second.tokenizer.decode(np.concatenate([second.train, second.val])) == "to be or not to be\n" * 50
    assert not list(npy.parent.glob("*.tmp"))


def test_cache_is_invalidated_when_the_file_changes(tmp_path, cfg):
    cfg.path = write(tmp_path, "aaaa" * 30)
    before, _ = prepare(cfg)
    write(tmp_path, "bbbbb" * 30)
    after, tok = prepare(cfg)
    assert after != before and tok.chars == "b"


def test_split_and_unigram_entropy(cfg):
    ds = load_tokens(cfg)
    assert len(ds.train) == 18_000 and len(ds.val) == 2_000
    assert "built-in corpus" in ds.source
    counts = np.bincount(np.asarray(ds.train), minlength=ds.tokenizer.vocab_size)
    assert ds.unigram_entropy() == pytest.approx(entropy(counts))
    assert ds.unigram_entropy(chunk=777) == pytest.approx(entropy(counts))


# ---------------------------------------------------------------------------- built-in corpus

def test_builtin_corpus_is_deterministic_text():
    text = builtin_corpus(50_000)
    assert len(text) == 50_000 and text == builtin_corpus(50_000)
    assert text != builtin_corpus(50_000, seed=1)
    assert text.isascii() and set(text) <= set("\n +-*=.") | set("0123456789") | set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    assert " = " in text and "\n" in text


def test_builtin_corpus_grammar_and_arithmetic_hold():
    text = builtin_corpus(100_000)
    sentences = [s.split() for line in text.splitlines()[:-1] for s in line.split(".") if " = " in s]
    assert len(sentences) > 1000
    for a, op, b, eq, c in sentences:
        assert int(c) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op], (a, op, b, c)
    assert "The cats are" in text and "The cat is" in text and "The cats is" not in text


def test_builtin_corpus_bigram_entropy_far_below_unigram():
    ids = CharTokenizer.from_text(text := builtin_corpus(300_000)).encode(text).astype(np.int64)
    V = int(ids.max()) + 1
    unigram = entropy(np.bincount(ids, minlength=V))
    joint = entropy(np.bincount(ids[:-1] * V + ids[1:], minlength=V * V))
    bigram_conditional = joint - entropy(np.bincount(ids[:-1], minlength=V))
    assert bigram_conditional < 0.75 * unigram


# -------------------------------------------------------------------------------- batches

def test_splitmix64_matches_the_reference_sequence():
    golden = 0x9E3779B97F4A7C15  # SplitMix64 seeded with 0 outputs mix(golden), mix(2 golden), ...
    states = np.array([0, golden, 2 * golden % 2**64], dtype=np.uint64)
    assert data._splitmix64(states).tolist() == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_offsets_are_deterministic_and_depend_on_seed_step_row():
    rows = np.arange(64)
    a = batch_offsets(7, 3, rows, 10_000)
    assert a.dtype == np.int64 and a.min() >= 0 and a.max() < 10_000
    np.testing.assert_array_equal(a, batch_offsets(7, 3, rows, 10_000))
    np.testing.assert_array_equal(a[10:20], batch_offsets(7, 3, rows[10:20], 10_000))
    for other in (batch_offsets(8, 3, rows, 10_000), batch_offsets(7, 4, rows, 10_000)):
        assert (a != other).mean() > 0.9
    assert len(set(a.tolist())) > 60


def test_offsets_cover_the_range_uniformly():
    n, bins = 1_000_003, 50
    offsets = np.concatenate([batch_offsets(1, step, np.arange(1000), n) for step in range(200)])
    counts = np.bincount(offsets * bins // n, minlength=bins)
    expected = len(offsets) / bins
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 100  # 49 degrees of freedom: mean 49, sd ~10


def test_eval_offsets_are_fixed_and_distinct_from_training():
    e = eval_offsets(5, 4, 8, 100_000)
    assert e.shape == (4, 8)
    np.testing.assert_array_equal(e, eval_offsets(5, 4, 8, 100_000))
    train = batch_offsets(5, 0, np.arange(32), 100_000)
    assert (e.ravel() != train).mean() > 0.9


def test_targets_are_inputs_shifted_by_one():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(tokens, 16, np.array([0, 5, 983]))
    assert x.shape == y.shape == (3, 16) and x.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], [0, 5, 983])
    np.testing.assert_array_equal(y, x + 1)
    assert y[2, -1] == 999


def test_get_batch_on_a_memmap(cfg):
    ds = load_tokens(cfg)
    x, y = get_batch(ds.train, 8, np.array([0, 100]))
    assert type(x) is np.ndarray
    np.testing.assert_array_equal(x[1], ds.train[100:108])
    np.testing.assert_array_equal(y[1], ds.train[101:109])


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 50, 5000).astype(np.uint16)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 6])
def test_rank_shards_concatenate_to_the_global_batch(tokens, world):
    whole = BatchSampler(tokens, 16, 12, seed=3)
    for step in (0, 1, 1000):
        gx, gy = whole.batch(step)
        shards = [BatchSampler(tokens, 16, 12, seed=3, rank=r, world=world).batch(step) for r in range(world)]
        np.testing.assert_array_equal(np.concatenate([x for x, _ in shards]), gx)
        np.testing.assert_array_equal(np.concatenate([y for _, y in shards]), gy)
        offsets = batch_offsets(3, step, np.arange(12), len(tokens) - 16)
        np.testing.assert_array_equal(gx, get_batch(tokens, 16, offsets)[0])


def test_micro_batches_split_the_rank_shard(tokens):
    sampler = BatchSampler(tokens, 16, 12, seed=3, rank=1, world=2)
    x, _ = sampler.batch(5)
    for n_micro in (2, 3, 6):
        micros = [sampler.batch(5, micro=m, n_micro=n_micro)[0] for m in range(n_micro)]
        assert all(len(m) == 6 // n_micro for m in micros)
        np.testing.assert_array_equal(np.concatenate(micros), x)
    assert not np.array_equal(sampler.batch(5)[0], sampler.batch(6)[0])


def test_sampler_rejects_indivisible_batches(tokens):
    with pytest.raises(UserError, match=r"batch_size \(12\) must be divisible by the number of data-parallel ranks \(5\)"):
        BatchSampler(tokens, 16, 12, seed=0, rank=0, world=5)
    with pytest.raises(UserError, match=r"\(12\) must be divisible by .* \(2 x 4 = 8\)"):
        BatchSampler(tokens, 16, 12, seed=0, rank=0, world=2).batch(0, n_micro=4)
    with pytest.raises(UserError, match="holds 10 tokens, but block_size 10 needs at least 11"):
        BatchSampler(tokens[:10], 10, 12, seed=0)
