"""Option-token verification and special-token policy."""

import pytest
from tiny_tokenizers import byte_bpe, char_level

from phaseprune.core.errors import UsageError
from phaseprune.engine.encoding import encode_prompts, option_tokens
from phaseprune.model.arch import default_add_bos

PROMPTS = [
    "Which river is longest?\nA. Nile\nB. Rhine\nC. Seine\nD. Thames\nAnswer:",
    "What is two plus two?\nA. three\nB. four\nC. five\nD. six\nAnswer:",
]


def test_letters_are_single_distinct_tokens():
    tok = byte_bpe()
    opts = option_tokens(tok, PROMPTS, 4)
    assert opts.letters == ("A", "B", "C", "D")
    assert opts.texts == (" A", " B", " C", " D")
    assert len(set(opts.ids)) == 4
    for text, tid in zip(opts.texts, opts.ids, strict=True):
        assert tok.encode(text, add_special_tokens=False) == [tid]
    # lm-eval's split: encode(prompt + " A") == encode(prompt) + [id(" A")]
    whole = tok.encode(PROMPTS[0] + " C", add_special_tokens=False)
    assert whole == tok.encode(PROMPTS[0], add_special_tokens=False) + [opts.ids[2]]


def test_multi_token_letters_refused():
    with pytest.raises(UsageError, match="not a single token"):
        option_tokens(char_level(), PROMPTS, 4)


def test_bos_policy_follows_lm_eval():
    assert default_add_bos("gemma2") and default_add_bos("gemma3_text")
    assert not default_add_bos("llama") and not default_add_bos("gpt2")
    tok = byte_bpe()
    plain = encode_prompts(tok, PROMPTS, 4, family="llama")
    with_bos = encode_prompts(tok, PROMPTS, 4, family="gemma")
    assert not plain.add_bos and with_bos.add_bos
    assert with_bos.input_ids[0] == [tok.bos_token_id, *plain.input_ids[0]]
    forced = encode_prompts(tok, PROMPTS, 4, family="llama", add_bos=True)
    assert forced.input_ids == with_bos.input_ids


def test_chat_without_template_refused():
    with pytest.raises(UsageError, match="no chat template"):
        encode_prompts(byte_bpe(), PROMPTS, 4, family="llama", chat=True)


def test_chat_template_wraps_prompt_and_scores_bare_letters():
    tok = byte_bpe()
    tok.chat_template = (
        "{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:\n{% endif %}"
    )
    enc = encode_prompts(tok, PROMPTS, 4, family="gemma", chat=True)
    assert not enc.add_bos and enc.chat  # the template brings its own special tokens
    assert enc.options.texts == ("A", "B", "C", "D")
    text = tok.decode(enc.input_ids[0])
    assert text.startswith("<bos>user: Which river") and text.endswith("Answer:\nassistant:\n")
