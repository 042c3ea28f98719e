"""CLIP's text tower and tokenizer (``query --text``) give exactly open_clip's text vectors,
from the same checkpoint file as the ``clip`` image vectors, without open_clip at run time."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from dreamsearch.errors import WeightsError
from dreamsearch.models import PendingModel
from dreamsearch.models.clip_text import load_text_tower
from dreamsearch.models.clip_tokenizer import CONTEXT_LENGTH, clip_tokenizer
from tests.helpers.official_layout import write_tiny_openai_clip

#: ASCII, accents, CJK, emoji (with joiners and skin tones), punctuation and contractions,
#: odd whitespace, HTML entities, mojibake (ftfy), CLIP's own markers typed as text, text
#: that cleans to nothing, and text over CLIP's 77 tokens.
CORPUS = [
    "ramen in a paper bowl",
    "A Photo Of A DOG, running on the beach!!!",
    "Crème brûlée à la française, naïve café, Ærøskøbing, Straße",
    "東京の夜景とラーメン",
    "北京烤鸭",
    "한국어 텍스트",
    "🍜🐱‍👤 emoji 👍🏽 ❤️ 🇫🇷",
    "it's we'll they'd I'M you're we've 'quoted'",
    "don't stop: 123 4.5e6 $$$ --- (a) [b] {c} #tag @user ~/path/to/file.jpg",
    "  tabs\tand\nnewlines\r\n\u00a0nbsp \u3000ideographic   space  ",
    "&amp;lt;b&amp;gt; html &quot;x&quot; &eacute;",
    "mojibake: cafÃ© rÃ©sumÃ©",
    "<end_of_text> inside <start_of_text> text",
    "Ünïcödé ΑΒΓ русский текст عربي हिन्दी ไทย",
    "word " * 90,
    "supercalifragilisticexpialidocious" * 12,
    "   ",
]
TEXTS = [
    "ramen in a paper bowl",
    "Crème brûlée à la française",
    "東京の夜景とラーメン",
    "🍜🐱‍👤 emoji 👍🏽",
    "word " * 90,
]


@pytest.mark.slow
def test_tokenizer_matches_open_clip():
    """The ids are open_clip's for every text of the corpus, markers and cut included (the
    import of open_clip alone takes ~8 s here: slow)."""
    from open_clip.tokenizer import tokenize

    ours = clip_tokenizer()
    for text in CORPUS:
        reference = [int(i) for i in tokenize([text])[0] if i != 0]
        assert list(ours(text).ids) == reference, text


def test_text_over_the_context_is_cut_and_says_so():
    tokenizer = clip_tokenizer()
    long, short = tokenizer("word " * 90), tokenizer("ramen in a paper bowl")
    assert long.cut and len(long.ids) == CONTEXT_LENGTH and long.ids[-1] == tokenizer.ids["<end_of_text>"]
    assert not short.cut and len(short.ids) == 7 and not short.empty
    assert tokenizer(" \t\n").empty


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["openai_archive", "float32_state_dict"])
def test_text_vectors_match_open_clip_encode_text(layout, openai_clip_weights):
    """Random weights in OpenAI's layouts, loaded by open_clip (the reference) and by us:
    the same unit vectors within 1e-5 for ASCII, accented, CJK and emoji text, and text
    over the limit; one text alone and in a batch of texts of other lengths."""
    import open_clip

    path = openai_clip_weights(archive=layout == "openai_archive") / "baselines" / "ViT-B-32.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated
        reference = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
    with torch.no_grad():
        expected = torch.nn.functional.normalize(reference.encode_text(open_clip.tokenize(TEXTS)), dim=-1).numpy()
    text = PendingModel("clip", weights_dir=path.parents[1], device="cpu").load_text()
    batch = text.embed([text.tokenize(t) for t in TEXTS])
    alone = np.stack([text.embed([text.tokenize(t)])[0] for t in TEXTS])
    assert batch.shape == (len(TEXTS), 512)
    assert np.abs(batch - expected).max() <= 1e-5
    assert np.abs(alone - expected).max() <= 1e-5
    assert np.abs(expected[0] - expected[1]).max() > 1e-3  # distinct texts, distinct vectors


def test_a_file_without_a_text_tower_is_named(tmp_path):
    root = write_tiny_openai_clip(tmp_path)
    path = root / "baselines" / "ViT-B-32.pt"
    state = torch.load(path, weights_only=True)
    del state["text_projection"]
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"ViT-B-32\.pt: no OpenAI CLIP text tower"):
        load_text_tower(path)
    state.pop("ln_final.weight")
    state["text_projection"] = torch.zeros(64, 32)
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"ViT-B-32\.pt: no OpenAI CLIP text tower in it \(.*ln_final"):
        load_text_tower(path)
