from expert_router.classifier.preprocess import (
    NUMBER_TOKEN,
    content_tokens,
    make_vectorizer,
    stop_words,
    tokenize,
)


def test_lowercases_and_substitutes_numbers():
    assert tokenize("Version 42 of GPT4 beats 3rd place") == [
        "version",
        NUMBER_TOKEN,
        "of",
        "gpt4",
        "beats",
        NUMBER_TOKEN,
        "place",
    ]


def test_only_a_leading_digit_makes_a_number():
    tokens = tokenize("b52 52b 2024")
    assert tokens == ["b52", NUMBER_TOKEN, NUMBER_TOKEN]


def test_stop_words_and_numbers_are_removed():
    assert content_tokens("The cat and the 12 dogs of 1999 were THERE") == ["cat", "dogs"]
    assert NUMBER_TOKEN in stop_words() and "the" in stop_words()


def test_vectorizer_vocabulary_has_no_stop_words_or_numbers():
    vectorizer = make_vectorizer()
    vectorizer.fit(["The 3 kernels compiled 42 modules", "a kernel panic in 2019 on the server"])
    vocabulary = set(vectorizer.get_feature_names_out())
    assert vocabulary == {"kernels", "compiled", "modules", "kernel", "panic", "server"}


def test_ascii_fast_path_finds_the_same_words():
    from expert_router.classifier.preprocess import ascii_word_tokens, raw_word_tokens

    text = "Hello, World! snake_case x-ray 3.14 a I e.g. C++ (tabs)\\there\n"
    long_words = [t.decode() for t in ascii_word_tokens(text) if len(t) > 1]
    assert long_words == raw_word_tokens(text)
